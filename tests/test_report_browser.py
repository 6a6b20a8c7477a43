"""``i2p demo`` (small, with the test-tiny teacher) end to end and resumed, ``i2p report`` as one
self-contained HTML file, and that file opened in headless Chromium: no console errors, every
image decodes with a non-zero size, and a screenshot is kept under ``artifacts/`` for CI.

The browser test skips when no Chromium is installed (``.ci/run`` installs Debian's ``chromium``
when it runs as root).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import REPO
from i2p.cli import main
from i2p.demo import DemoPlan, run_demo

SMALL = dict(data="builtin:primitives?n_train=3&n_test=2", teacher="test-tiny", teacher_weights="random",
             points=512, epochs=1, batch_size=8, device="cpu", way=3, shot=2, query=2, folds=2, figures=1,
             probe_every=1, progress=True, overrides=["model.drop_path=0.0", "model.num_groups=[128,64,16]"])
EVALS = ("svm-pretrained", "fewshot-pretrained", "svm-random", "fewshot-random")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    run_demo(DemoPlan(out=str(out), **SMALL))
    return out


def _images(html: str) -> list[bytes]:
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    out = []
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:80]
        out.append(base64.b64decode(s.split(",", 1)[1]))
    return out


def test_demo_writes_every_stage_and_the_report(demo_dir):
    summary = json.loads((demo_dir / "demo.json").read_text())
    assert set(summary["stage_seconds"]) == {"stage 1: cache build", "stage 2: pretrain", "stage 3: evaluate",
                                             "report"}
    assert (demo_dir / "run" / "last.ckpt").is_file()
    for name in EVALS:
        res = json.loads((demo_dir / "eval" / name / "result.json").read_text())
        assert (res["checkpoint"]["path"] == "random") == name.endswith("random")
        assert name in summary["results"]
    metrics = [json.loads(ln) for ln in (demo_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("probe_svm_acc" in r for r in metrics)  # the per-epoch probe ran
    assert (demo_dir / "report.html").is_file()
    names = sorted(p.name for p in (demo_dir / "report-figures").iterdir())
    assert len(names) == 2 and names[0].startswith("recon-") and names[1].startswith("sample-"), names
    assert names[0][len("recon-"):] == names[1][len("sample-"):]  # both of the same shape


def test_demo_rerun_reuses_finished_stages(demo_dir, capsys):
    before = {n: (demo_dir / "eval" / n / "result.json").stat().st_mtime_ns for n in EVALS}
    steps = (demo_dir / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    run_demo(DemoPlan(out=str(demo_dir), **SMALL))
    err = capsys.readouterr().err
    assert "0 shards written, 1 already done" in " ".join(err.split())
    assert all(f"{n}: reusing" in err for n in EVALS), err
    assert {n: (demo_dir / "eval" / n / "result.json").stat().st_mtime_ns for n in EVALS} == before
    assert (demo_dir / "run" / "metrics.jsonl").read_text() == steps  # nothing trained again


def test_report_is_one_self_contained_file(demo_dir):
    from PIL import Image

    html = (demo_dir / "report.html").read_text()
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing but data URIs and anchors
    assert not re.search(r"url\(|@import|<link|<iframe", html)
    pngs = _images(html)
    # loss curves, 2D/3D balance, probe, throughput, sample + recon figures, a confusion matrix per
    # evaluation (SVM and few-shot, pretrained and random)
    assert len(pngs) == 10
    for data in pngs:
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.width > 0 and im.height > 0
    for text in ("config.yaml", "3D reconstruction part", "2D feature-regression part", "Linear-SVM probe",
                 "held-out R2", "samples/s", "random init", "fewshot", "svm", "viz sample"):
        assert text in html, text


def test_report_command(demo_dir, tmp_path, capsys):
    out = tmp_path / "r.html"
    evals = [str(demo_dir / "eval" / n) for n in EVALS[:2]]
    assert main(["report", str(demo_dir / "run"), "--eval", evals[0], "--eval", evals[1], "--out", str(out),
                 "--no-figures"]) == 0
    html = out.read_text()
    assert len(_images(html)) == 4 + 2  # curves, balance, probe, rate + the SVM and few-shot confusion matrices
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(demo_dir / "run"), "--eval", str(tmp_path), "--out", str(out)]) == 2


def _chromium() -> str | None:
    for name in (os.environ.get("I2P_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _chrome(binary: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="i2p-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_in_headless_chromium(demo_dir):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (.ci/run installs it when run as root)")
    report = demo_dir / "report.html"
    n_img = len(_images(report.read_text()))
    proc = _chrome(binary, "--virtual-time-budget=10000", "--dump-dom", report.resolve().as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = re.search(r'<div id="i2p-check"([^>]*)>([^<]*)<', proc.stdout)
    assert marker, proc.stdout[-2000:]
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', marker.group(1)))
    assert attrs.get("data-status") == "done", marker.group(0)
    assert attrs["data-errors"] == "0", marker.group(2)
    assert attrs["data-images-total"] == str(n_img) and attrs["data-images-ok"] == str(n_img), marker.group(2)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    # A screenshot for the CI artefacts (artifacts/ is git-ignored).
    shots = REPO / "artifacts"
    shots.mkdir(exist_ok=True)
    shot = shots / "report-screenshot.png"
    if shot.exists():
        shot.unlink()
    proc = _chrome(binary, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
                   report.resolve().as_uri())
    assert proc.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
