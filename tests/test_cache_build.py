"""Stage 1 end to end: build, resume after SIGKILL, sharded builds, skips, refusals, CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import build_small_cache, subprocess_env
from i2p.cache.inspect import cache_info, verify_cache
from i2p.common.errors import CacheError, UserError

RUNNER = str(Path(__file__).with_name("cli_runner.py"))
DATA = "builtin:primitives?n_train=12&n_test=2"  # 13 classes x 12 = 156 samples = 3 shards


def run_cli(*args, env_extra=None, check=True):
    env = subprocess_env()
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_args(out, *extra):
    return ["cache", "build", "--data", DATA, "--out", str(out), "--teacher", "test-tiny",
            "--teacher-weights", "random", "--points", "256", "--batch-size", "8", "--device", "cpu",
            "--no-progress", *extra]


def arrays(path):
    root = zarr.open_group(str(path), mode="r")
    return {name: root[name][:] for name in ("points", "features", "saliency", "proj", "label", "id")}


def assert_same_store(a, b):
    xa, xb = arrays(a), arrays(b)
    for name in xa:
        assert xa[name].dtype == xb[name].dtype, name
        if xa[name].dtype.kind in "fiu":
            assert xa[name].tobytes() == xb[name].tobytes(), f"{name} differs"
        else:
            assert list(xa[name]) == list(xb[name]), name
    ia, ib = cache_info(str(a)), cache_info(str(b))
    for key in ("samples", "valid_samples", "classes", "skips", "complete", "data_fingerprint", "teacher"):
        assert ia[key] == ib[key], key
    sa = zarr.open_group(str(a), mode="r").attrs["settings"]
    sb = zarr.open_group(str(b), mode="r").attrs["settings"]
    assert sa == sb


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "c"
    run_cli(*build_args(out))
    return out


def test_reference_build_is_whole(reference):
    info = cache_info(str(reference))
    assert info["samples"] == 156 and info["valid_samples"] == 156 and info["classes"] == 13
    assert info["complete"] and info["shards_done"] == info["shards_total"] == 3
    assert info["teacher"] == "test-tiny" and info["teacher_random"] is True
    assert set(info["timings_s"]) == {"read", "project", "teacher", "write"}
    assert verify_cache(str(reference)) == []
    root = zarr.open_group(str(reference), mode="r")
    assert root["points"].shape == (156, 256, 3) and root["features"].shape == (156, 3, 8, 8, 8)
    assert root["features"].dtype == np.float16 and root["proj"].shape == (156, 3, 5)
    assert root["points"].shards == (64, 256, 3) and root["points"].chunks == (1, 256, 3)


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, reference):
    out = tmp_path / "c"
    proc = run_cli(*build_args(out), env_extra={"I2P_TEST_KILL_AT_SHARD": "1"}, check=False)
    assert proc.returncode == -9
    partial = cache_info(str(out))
    assert partial["shards_done"] == 1 and not partial["complete"]
    assert verify_cache(str(out))  # incomplete: verify complains
    run_cli(*build_args(out))
    assert_same_store(out, reference)
    assert verify_cache(str(out)) == []


def test_two_shard_processes_equal_one(tmp_path, reference):
    out = tmp_path / "c"
    env = subprocess_env()
    procs = [subprocess.Popen([sys.executable, RUNNER, *build_args(out, "--shard", f"{i}/2")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert_same_store(out, reference)


def test_rerun_of_complete_cache_does_nothing(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    report = build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    assert report.shards_done_now == 0 and report.shards_skipped_existing == 1 and report.complete


def test_other_settings_refused_unless_overwrite(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    with pytest.raises(CacheError, match="other settings.*num_points"):
        build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=256)
    report = build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=256, overwrite=True)
    assert report.complete and cache_info(str(out))["points"] == 256


def _write_cube(path: Path, scale=1.0):
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) * scale
    faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
             [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    lines = [f"v {a} {b} {c}" for a, b, c in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def test_bad_samples_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "meshes"
    for cls in ("a", "b"):
        d = root / cls / "train"
        d.mkdir(parents=True)
        _write_cube(d / "good1.obj")
        _write_cube(d / "good2.obj", 2.0)
    (root / "a" / "train" / "corrupt.obj").write_bytes(b"\x00\xff garbage \x01 v x y z\nf 1 2 9\n")
    (root / "b" / "train" / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (root / "b" / "train" / "empty.obj").write_text("# nothing here\n")
    out = tmp_path / "c"
    report = build_small_cache(out, data=f"meshes:{root}", points=128)
    assert report.complete
    info = cache_info(str(out))
    reasons = {s["id"]: s["reason"] for s in info["skips"]}
    assert set(reasons) == {"a/train/corrupt", "b/train/nan", "b/train/empty"}, reasons
    assert all(reasons.values())
    assert info["samples"] == 7 and info["valid_samples"] == 4
    assert verify_cache(str(out)) == []


@pytest.mark.parametrize("args, message", [
    (["--data", "nonsense"], "malformed data spec"),
    (["--data", "meshes:/does/not/exist"], "/does/not/exist"),
    (["--data", "builtin:primitives", "--teacher", "no-such-teacher"], "no-such-teacher"),
    (["--data", "builtin:primitives", "--shard", "3/2"], "--shard 3/2"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    proc = run_cli("cache", "build", "--out", str(tmp_path / "c"), "--no-progress", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in lines[0]


def test_info_and_verify_cli(reference):
    proc = run_cli("cache", "info", str(reference), "--json")
    assert '"samples": 156' in proc.stdout
    proc = run_cli("cache", "verify", str(reference), "--no-progress")
    assert proc.stdout.startswith("OK")


def test_verify_detects_damage(tmp_path):
    out = tmp_path / "c"
    build_small_cache(out, data="builtin:primitives?n_train=2&n_test=1", points=128)
    shard_file = next((out / "features" / "c").rglob("*"))
    while shard_file.is_dir():
        shard_file = next(shard_file.iterdir())
    shard_file.write_bytes(b"broken")
    problems = verify_cache(str(out))
    assert problems and "features" in problems[0]


def test_parse_shard_errors():
    from i2p.stage1_project.build import parse_shard

    assert parse_shard("1/4") == (1, 4)
    for bad in ("3/2", "-1/2", "a/b", "1", "0/0"):
        with pytest.raises(UserError):
            parse_shard(bad)
