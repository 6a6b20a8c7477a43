"""Official I2P-MAE / Point-M2AE compatibility: conversion, the official eval computation,
export directories, parameter counts (issue 13 items 1, 2, 5).

Reference data: /work/shared/fixtures/official-i2pmae/ (made by running the unmodified official
code; see its README). Models the fixtures do not cover (other sizes and level counts, points
near the origin, local_radius with padding) are checked against ``official_reference``, a
literal test-only model of the official eval forward that is itself checked on the fixture.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import official_reference as ref  # noqa: E402

from i2p.api.export import read_export, write_export  # noqa: E402
from i2p.api.loading import load_encoder  # noqa: E402
from i2p.common.errors import UserError  # noqa: E402
from i2p.official import config as oc  # noqa: E402
from i2p.official import keys as ok  # noqa: E402
from i2p.official.convert import (ConversionError, convert_checkpoint, convert_state, convert_to_dir,  # noqa: E402
                                  official_state_dict, write_official_checkpoint)
from i2p.official.eval import official_embed, official_outputs, pool_tokens  # noqa: E402
from i2p.official.params import (PAPER_ENCODER_PARAMETERS, count_parameters, official_encoder_parameters,  # noqa: E402
                                 official_encoder_shapes)
from i2p.stage2_pretrain.model import HierarchicalEncoder, ModelConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [os.environ.get("I2P_OFFICIAL_FIXTURES", ""), str(REPO.parent / "shared" / "fixtures" / "official-i2pmae"),
               str(REPO.parents[1] / "shared" / "fixtures" / "official-i2pmae"), "/work/shared/fixtures/official-i2pmae"]
FIX = next((Path(p) for p in _CANDIDATES if p and (Path(p) / "small" / "outputs.pt").is_file()), None)
needs_fixture = pytest.mark.skipif(FIX is None, reason="official fixtures not found (set I2P_OFFICIAL_FIXTURES)")
TOL = 2e-5


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load(name: str):
    return torch.load(FIX / "small" / name, map_location="cpu", weights_only=True)


def _compare_levels(levels: list[dict], expected: dict, tol: float = TOL) -> dict:
    """Every level: FPS indices, centres, neighbour sets, visibility exactly / within ``tol``;
    token embeddings everywhere, block outputs and tokens where encoded. Returns max errors."""
    errs = {}
    for lvl, got in enumerate(levels, start=1):
        p = f"level{lvl}."
        assert torch.equal(got["fps_idx"].long(), expected[p + "fps_idx"].long()), p + "fps_idx"
        assert torch.equal(got["masked"], expected[p + "masked"]), p + "masked"
        assert torch.equal(got["knn_idx"].sort(dim=-1).values, expected[p + "knn_idx"].sort(dim=-1).values), p + "knn"
        errs[p + "centers"] = (got["centers"] - expected[p + "centers"]).abs().max().item()
        vis = ~expected[p + "masked"]
        errs[p + "token_embed"] = (got["token_embed"] - expected[p + "token_embed"]).abs().max().item()
        for key in ("block_out", "tokens"):
            errs[p + key] = (got[key] - expected[p + key])[vis].abs().max().item()
            assert (got[key][~vis] == 0).all(), p + key + " not zero where masked"
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, bad
    return errs


# --------------------------------------------------------------------------- the fixture

@needs_fixture
def test_convert_small_fixture_matches_official_at_every_level(tmp_path):
    cfg_file = FIX / "small" / "config.json"
    out = convert_to_dir(FIX / "small" / "state_dict.pt", "i2p-mae", tmp_path / "export", cfg_file)
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    config = json.loads((out / "config.json").read_text())  # the one export format (i2p.api.export)
    assert config["format"] == "i2p-encoder-1" and config["pooling"] == "max"
    assert config["normalization"]["enabled"] is False
    for part in ("architecture", "model_config"):
        assert config[part]["eval_mode"] == "official" and config[part]["token_merge"] == "official", part
    assert config["provenance"]["converted_from"] == "i2p-mae"
    enc = load_encoder(out, "cpu")  # the one loader
    assert enc.pool == "max" and enc.normalize is False and enc.config.eval_mode == "official"
    encoder = enc.network
    points = _load("inputs.pt")["points"]
    expected = _load("outputs.pt")
    feature, levels = official_embed(encoder, points)
    assert (feature - expected["svm_feature"]).abs().max().item() <= TOL
    _compare_levels(levels, expected)
    # the ordinary feature path (what embed() and stage 3 use) gives the same vector
    assert (encoder(points)[-1].tokens.amax(dim=1) - expected["svm_feature"]).abs().max().item() <= TOL
    assert (enc.embed(points, normalize=False) - expected["svm_feature"]).abs().max().item() <= TOL
    assert (enc.embed(points) - expected["svm_feature"]).abs().max().item() <= TOL  # the export's own default
    # the flat layout of outputs.pt, with the packed tokens (compared on real rows only)
    flat = official_outputs(encoder, points)
    assert set(expected) <= set(flat)
    for lvl in (1, 2, 3):
        valid = expected[f"level{lvl}.tokens_raw_valid"]
        assert torch.equal(flat[f"level{lvl}.tokens_raw_valid"], valid)
        assert (flat[f"level{lvl}.tokens_raw"] - expected[f"level{lvl}.tokens_raw"])[valid].abs().max() <= TOL
    # each cloud alone gives the same as the batch
    alone = torch.cat([official_embed(encoder, points[i:i + 1])[0] for i in range(points.shape[0])])
    assert (alone - feature).abs().max().item() <= 1e-5


@needs_fixture
def test_reference_model_matches_the_fixture():
    """The literal test-only model reproduces the official outputs: it may check i2p elsewhere."""
    sd = ok.strip_module_prefix(_load("state_dict.pt")["base_model"])
    section = json.loads((FIX / "small" / "config.json").read_text())["model_config"]
    feature, levels = ref.official_eval(sd, section, _load("inputs.pt")["points"])
    expected = _load("outputs.pt")
    assert (feature - expected["svm_feature"]).abs().max().item() <= TOL
    _compare_levels(levels, expected)


@needs_fixture
def test_stage3_loads_an_export_directory(tmp_path):
    from i2p.stage3_eval.features import extract_features
    from i2p.stage3_eval.runner import default_pool, encoder_for

    out = convert_to_dir(FIX / "small" / "state_dict.pt", "i2p-mae", tmp_path / "e", FIX / "small" / "config.json")
    stored = read_export(out)[0]

    def no_calibration():
        raise AssertionError("an official encoder must keep its stored BatchNorm statistics")

    enc, info = encoder_for(str(out), "cpu", "tiny", 0, no_calibration, 4)  # what every protocol calls
    assert info["model_config"]["eval_mode"] == "official" and info["bn_calibration_shapes"] == 0
    assert default_pool(str(out), None) == "max"
    assert all(torch.equal(v, stored[k]) for k, v in enc.state_dict().items())  # statistics untouched
    points, expected = _load("inputs.pt")["points"], _load("outputs.pt")

    class _Cloud:  # a one-cloud data set in the readers' interface
        def __init__(self, i):
            self.points, self.label, self.id = points[i].numpy(), 0, str(i)

    class _Data:
        ids, split = [str(i) for i in range(points.shape[0])], "test"

        def __len__(self):
            return points.shape[0]

        def load(self, i):
            return _Cloud(i)

    X = extract_features(enc, _Data(), batch_size=points.shape[0], pool=default_pool(str(out), None), progress=False).X
    assert abs(X - expected["svm_feature"].numpy()).max() <= TOL


@needs_fixture
def test_cli_convert_and_back(tmp_path, capsys):
    from i2p.cli import main

    out = tmp_path / "exp"
    assert main(["convert", "--from", "i2p-mae", str(FIX / "small" / "state_dict.pt"), "--model-config",
                 str(FIX / "small" / "config.json"), "--out", str(out)]) == 0
    assert "converted" in capsys.readouterr().err
    # refuses to overwrite, and the paper config does not fit the small checkpoint: the keys are listed
    assert main(["convert", "--from", "i2p-mae", str(FIX / "small" / "state_dict.pt"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "--from", "i2p-mae", str(FIX / "small" / "state_dict.pt"), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--model-config" in err and "h_encoder.encoder_blocks.0.blocks.1.norm1.weight" in err
    # back to the official layout: the encoder entries of the original checkpoint, bit for bit
    back = tmp_path / "back.pth"
    assert main(["convert", "--from", "i2p", str(out), "--to", "i2p-mae", "--out", str(back)]) == 0
    original = _load("state_dict.pt")["base_model"]
    written = torch.load(back, weights_only=True)["base_model"]
    enc_keys = [k for k in original if k.startswith("module.h_encoder.")]
    assert list(written) == enc_keys  # the official order too
    for k in enc_keys:
        assert written[k].dtype == original[k].dtype and torch.equal(written[k], original[k]), k


@needs_fixture
def test_yaml_model_sections_parse(tmp_path):
    cfg = json.loads((FIX / "small" / "config.json").read_text())
    y = tmp_path / "i2p-mae.yaml"
    y.write_text("optimizer: {type: AdamW}\n" + cfg["paper_config_yaml_model_section"] + "\nnpoints: 2048\n")
    assert oc.read_model_section(y) == oc.paper_config("i2p-mae")
    # the Point-M2AE file's trailing comma in a flow mapping
    y2 = tmp_path / "pm2ae.yaml"
    y2.write_text("model: {\n  NAME: Point_M2AE,\n  mask_ratio: 0.8,\n  group_sizes: [16, 8, 8],\n"
                  "  num_groups: [512, 256, 64],\n  encoder_depths: [5, 5, 5],\n  encoder_dims: [96, 192, 384],\n"
                  "  local_radius: [0.32, 0.64, 1.28],  # disabled for pre-training\n  decoder_depths: [1, 1],\n"
                  "  decoder_dims: [384, 192],\n  decoder_up_blocks: [1, 1],\n  drop_path_rate: 0.1,\n"
                  "  num_heads: 6,}\n")
    assert oc.read_model_section(y2) == oc.paper_config("point-m2ae")
    j = tmp_path / "m.json"
    j.write_text(json.dumps(cfg["model_config"]))
    assert oc.read_model_section(j) == cfg["model_config"]


# --------------------------------------------------------------------------- other official models

def _random_official_state(section: dict, seed: int) -> dict[str, torch.Tensor]:
    """Weights of an official encoder of any size (official names, ``module.`` prefix), drawn so
    that every term matters (no constant norms or biases), plus a few decoder keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_encoder_shapes(section).items():
        if key.endswith("num_batches_tracked"):
            v = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or key.endswith("bias"):
            v = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # LayerNorm / BatchNorm scale
            v = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) / math.sqrt(shape[1] * (shape[2] if len(shape) > 2 else 1))
        sd["module.h_encoder." + key] = v
    sd["module.mask_token"] = torch.randn(1, section["encoder_dims"][-1], generator=g)
    sd["module.rec_head_3d.weight"] = torch.randn(24, 8, 1, generator=g)
    return sd


def _clouds(seed: int, n: int = 3, points: int = 512) -> torch.Tensor:
    """Unit-sphere surface clouds with points near the origin (squared norm <= 1e-3), which a
    textbook FPS would pick early and the official kernel never picks; cloud 0 starts there."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, points, 3, generator=g)
    x = x / x.norm(dim=-1, keepdim=True) * (0.6 + 0.4 * torch.rand(n, points, 1, generator=g))
    x[:, 1:4] = 0.01 * torch.randn(n, 3, 3, generator=g)
    x[0, 0] = torch.tensor([0.01, -0.005, 0.002])
    return x.float()


SECTIONS = {
    "dims-not-doubling": dict(NAME="I2P_MAE", num_groups=[128, 64, 16], group_sizes=[8, 8, 4],
                              encoder_dims=[32, 80, 128], encoder_depths=[2, 1, 2], num_heads=4,
                              decoder_dims=[128, 80], decoder_depths=[1, 1], local_radius=[0, 0, 0]),
    "two-levels": dict(NAME="I2P_MAE", num_groups=[64, 16], group_sizes=[8, 4], encoder_dims=[24, 48],
                       encoder_depths=[1, 1], num_heads=2, decoder_dims=[48], decoder_depths=[1]),
    "four-levels": dict(NAME="I2P_MAE", num_groups=[256, 96, 32, 8], group_sizes=[16, 8, 6, 4],
                        encoder_dims=[16, 32, 64, 96], encoder_depths=[1, 1, 1, 1], num_heads=2,
                        decoder_dims=[96, 64], decoder_depths=[1, 1], local_radius=[0, 0, 0, 0]),
    "point-m2ae-radius": dict(NAME="Point_M2AE", num_groups=[128, 48, 16], group_sizes=[16, 4, 4],
                              encoder_dims=[24, 48, 96], encoder_depths=[1, 1, 1], num_heads=3,
                              decoder_dims=[96, 48], decoder_depths=[1, 1], local_radius=[0.32, 0.64, 1.28]),
}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_other_official_models_match_the_reference(name):
    section = SECTIONS[name]
    source = oc.NAMES[section["NAME"]]
    state = _random_official_state(section, seed=len(name))
    conv = convert_state(state, source, section)
    encoder = HierarchicalEncoder(conv.model_config)
    encoder.load_state_dict(conv.state)
    points = _clouds(seed=len(name))
    feature, levels = official_embed(encoder, points, pooling=conv.pooling)
    expected_feature, expected_levels = ref.official_eval(ok.strip_module_prefix(state), section, points)
    expected = {f"level{i + 1}.{k}": v for i, lv in enumerate(expected_levels) for k, v in lv.items()}
    _compare_levels(levels, expected)
    if conv.pooling == "mean_plus_max":
        top = expected_levels[-1]["tokens"]
        expected_feature = top.mean(dim=1) + top.amax(dim=1)
    assert (feature - expected_feature).abs().max().item() <= TOL
    # no official FPS picks a near-origin point except the start
    for lv_in, lv in zip([points], levels[:1]):
        near = (lv_in * lv_in).sum(-1) <= 1e-3
        picked = torch.gather(near, 1, lv["fps_idx"])
        assert not picked[:, 1:].any() and picked[0, 0]
    if name == "point-m2ae-radius":  # the padding rows matter here: the batch changes the result
        counts = (~levels[0]["masked"]).sum(dim=1)
        assert len(set(counts.tolist())) > 1
        alone = torch.cat([official_embed(encoder, points[i:i + 1], conv.pooling)[0] for i in range(3)])
        expected_alone = torch.cat([_pool_ref(ref.official_eval(ok.strip_module_prefix(state), section,
                                                                points[i:i + 1])[1][-1]["tokens"]) for i in range(3)])
        assert (alone - expected_alone).abs().max().item() <= TOL
        assert (alone - feature).abs().max().item() > 1e-4


def _pool_ref(top: torch.Tensor) -> torch.Tensor:
    return top.mean(dim=1) + top.amax(dim=1)


def test_fps_skips_points_near_the_origin():
    from i2p.common.point_ops import farthest_point_sample

    pts = _clouds(seed=3, n=2, points=300)
    got = farthest_point_sample(pts, 64, skip_near_origin=1e-3)
    assert torch.equal(got, ref.kernel_fps(pts, 64))
    textbook = farthest_point_sample(pts, 64)
    assert not torch.equal(got, textbook)  # the quirk matters on these clouds
    # everything near the origin: index 0 repeated, as the kernel does
    tiny = torch.full((1, 5, 3), 1e-3)
    assert farthest_point_sample(tiny, 3, skip_near_origin=1e-3).tolist() == [[0, 0, 0]]


# --------------------------------------------------------------------------- released checkpoints

def _manifest(name: str) -> dict:
    return json.loads((FIX / name).read_text())


def _released_checkpoint(manifest: dict, path: Path, seed: int) -> None:
    """A file laid out like a released checkpoint: the manifest's keys, shapes and dtypes
    (random values), ``clip_model.*`` keys (I2P-MAE: as many as the manifest counts, float16
    and float32, small shapes), and an AdamW optimizer state."""
    g = torch.Generator().manual_seed(seed)
    base = {}
    for e in manifest["entries"]:
        shape, dtype = tuple(e["shape"]), getattr(torch, e["dtype"])
        if dtype == torch.int64:
            v = torch.zeros(shape, dtype=dtype)
        elif e["key"].endswith("running_var"):
            v = 0.5 + torch.rand(shape, generator=g)
        elif e["key"].endswith(("running_mean", "bias")):
            v = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            v = torch.randn(shape, generator=g) * 0.02
        base[e["key"]] = v.to(dtype)
    clip = manifest.get("excluded_clip_model")
    if clip:
        n16 = clip["dtypes_if_trained_on_gpu"]["float16"]["keys"]
        names = list(clip["example_keys"])
        names += [f"module.clip_model.visual.transformer.resblocks.{i // 12}.p{i % 12}"
                  for i in range(clip["num_keys"] - len(names))]
        for i, k in enumerate(names):
            base[k] = torch.randn(4, 3, generator=g).to(torch.float16 if i < n16 else torch.float32)
    params = [k for k in base if base[k].is_floating_point() and "running" not in k]
    optimizer = {"state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(base[k]),
                               "exp_avg_sq": torch.zeros_like(base[k])} for i, k in enumerate(params[:3])},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                   "amsgrad": False, "params": list(range(len(params)))}]}
    torch.save({"base_model": base, "optimizer": optimizer, "epoch": 299, "metrics": {"acc": 0.0},
                "best_metrics": {"acc": 0.0}}, path)


@needs_fixture
@pytest.mark.slow
@pytest.mark.parametrize("source,manifest", [("i2p-mae", "manifest-i2pmae-paper.json"),
                                             ("point-m2ae", "manifest-pointm2ae-paper.json")])
def test_released_layout_converts_and_embeds(tmp_path, source, manifest):
    m = _manifest(manifest)
    ckpt = tmp_path / "ckpt.pth"
    _released_checkpoint(m, ckpt, seed=7)
    out = convert_to_dir(ckpt, source, tmp_path / "export")  # no --model-config: the paper config
    _, config = read_export(out)
    enc = load_encoder(out, "cpu")
    encoder = enc.network
    assert config["pooling"] == oc.OFFICIAL_POOLING[source] == enc.pool
    from i2p.stage3_eval.runner import default_pool

    assert default_pool(str(out), None) == config["pooling"]
    assert config["provenance"]["dropped_keys"]["clip_model"] == (302 if source == "i2p-mae" else 0)
    assert config["provenance"]["source_epoch"] == 299
    assert count_parameters(encoder) == m["by_top_module"]["h_encoder"]["parameters"] == 12_654_976
    points = _clouds(seed=1, n=2, points=2048)
    feature, _ = official_embed(encoder, points, pooling=config["pooling"])
    assert feature.shape == (2, 384) and torch.isfinite(feature).all()
    assert config["embedding_dim"] == enc.dim == 384
    assert (enc.embed(points, normalize=False) - feature).abs().max().item() <= TOL
    # the same file without the module. prefix (a DistributedDataParallel run) converts the same
    ck = torch.load(ckpt, weights_only=True)
    ck["base_model"] = ok.strip_module_prefix(ck["base_model"])
    torch.save(ck, tmp_path / "ddp.pth")
    conv = convert_checkpoint(tmp_path / "ddp.pth", source)
    assert all(torch.equal(conv.state[k], v) for k, v in encoder.state_dict().items())


@needs_fixture
def test_unmapped_missing_and_misshaped_keys_are_listed(tmp_path):
    state = dict(_load("state_dict.pt")["base_model"])
    section = json.loads((FIX / "small" / "config.json").read_text())["model_config"]
    bad = dict(state)
    bad["module.h_encoder.token_embed.0.extra_conv.weight"] = torch.zeros(1)
    bad["module.something_else"] = torch.zeros(1)
    with pytest.raises(ConversionError) as err:
        convert_state(bad, "i2p-mae", section)
    msg = str(err.value)
    assert "2 checkpoint keys did not map" in msg
    assert "h_encoder.token_embed.0.extra_conv.weight" in msg and "something_else" in msg
    assert len(msg.splitlines()) == 1
    missing = {k: v for k, v in state.items() if "encoder_norms.2" not in k}
    with pytest.raises(ConversionError, match="2 encoder tensors missing.*h_encoder.encoder_norms.2.weight"):
        convert_state(missing, "i2p-mae", section)
    with pytest.raises(ConversionError, match="Point_M2AE but --from is i2p-mae"):
        convert_state(state, "i2p-mae", {**section, "NAME": "Point_M2AE"})
    # clip_model keys are dropped; a file that is not a checkpoint is refused in one line
    with_clip = {**state, "module.clip_model.visual.proj": torch.zeros(2, 2, dtype=torch.float16)}
    assert convert_state(with_clip, "i2p-mae", section).provenance["dropped_keys"]["clip_model"] == 1
    torch.save({"weights": [1, 2]}, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="no 'base_model'"):
        convert_checkpoint(tmp_path / "x.pt", "i2p-mae")


# --------------------------------------------------------------------------- round trip, counts

def test_official_layout_round_trip(tmp_path):
    section = SECTIONS["dims-not-doubling"]
    state = _random_official_state(section, seed=5)
    conv = convert_state(state, "i2p-mae", section)
    path = write_official_checkpoint(conv.state, conv.model_config, tmp_path / "o.pth")
    again = convert_checkpoint(path, "i2p-mae", section)
    assert list(again.state) == list(conv.state)
    assert all(torch.equal(again.state[k], conv.state[k]) for k in conv.state)
    enc = {k: v for k, v in state.items() if k.startswith("module.h_encoder.")}
    back = official_state_dict(conv.state)
    assert sorted(back) == sorted(enc) and all(torch.equal(back[k], enc[k]) for k in enc)
    # an i2p-architecture encoder has no official layout
    tiny = ModelConfig.tiny()
    with pytest.raises(UserError, match="official architecture"):
        write_official_checkpoint(HierarchicalEncoder(tiny).state_dict(), tiny, tmp_path / "t.pth")


def test_export_directory_round_trip(tmp_path):
    """The one writer and loader keep the whole ModelConfig (the official switches included),
    the pooling and normalisation, and the weights bit for bit; an export of the export too."""
    from i2p.api.export_run import export_encoder
    from i2p.api.loading import config_from_architecture, encoder_architecture

    cfg = ModelConfig.tiny(token_merge="official", eval_mode="official", official_local_radius=(0.3, 0.6, 1.2))
    encoder = HierarchicalEncoder(cfg).eval()
    out = write_export(encoder.state_dict(), cfg, tmp_path / "d", {"note": "test"}, pooling="mean_plus_max",
                       normalize=False)
    enc = load_encoder(out, "cpu")
    _, config = read_export(out)
    assert enc.config == cfg and config["provenance"] == {"note": "test"}
    assert config["architecture"]["official_local_radius"] == [0.3, 0.6, 1.2]
    assert config_from_architecture(config["architecture"]).official_local_radius == (0.3, 0.6, 1.2)
    assert enc.pool == "mean_plus_max" and enc.normalize is False and config["embedding_dim"] == enc.dim == 192
    loaded = enc.network
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), encoder.state_dict().values()))
    pts = _clouds(seed=2, n=2, points=1024)
    feature = official_embed(encoder, pts, "mean_plus_max")[0]
    assert torch.equal(official_embed(loaded, pts, "mean_plus_max")[0], feature)
    assert (enc.embed(pts) - feature).abs().max().item() <= 1e-6
    tokens = torch.randn(2, 5, 4)
    assert torch.allclose(pool_tokens(tokens, "mean_plus_max"), tokens.mean(1) + tokens.amax(1))
    again = export_encoder(str(out), tmp_path / "again", device="cpu")  # `i2p export` of the export
    assert load_encoder(again, "cpu").config == cfg
    for name in ("model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    # an architecture written before the official switches existed: i2p's own encoder
    old = {k: v for k, v in encoder_architecture(ModelConfig.tiny()).items()
           if k not in ("token_merge", "eval_mode", "official_local_radius")}
    assert encoder_architecture(config_from_architecture(old)) == encoder_architecture(ModelConfig.tiny())


def test_parameter_counts():
    """The paper-size encoder: 12,668,968 parameters with i2p's merge, 12,654,976 with the
    official one (as the official H_Encoder; the manifest agrees when the fixtures exist)."""
    official = oc.to_model_config(oc.paper_config("i2p-mae"), "i2p-mae")
    assert count_parameters(HierarchicalEncoder(ModelConfig.paper())) == PAPER_ENCODER_PARAMETERS["i2p"] == 12_668_968
    assert count_parameters(HierarchicalEncoder(official)) == PAPER_ENCODER_PARAMETERS["official"] == 12_654_976
    assert official_encoder_parameters(oc.paper_config("i2p-mae")) == 12_654_976
    for section in SECTIONS.values():  # the i2p module matches the official architecture at any size
        enc = HierarchicalEncoder(oc.to_model_config(section, oc.NAMES[section["NAME"]]))
        assert count_parameters(enc) == official_encoder_parameters(section)
    if FIX is not None:
        for name in ("manifest-i2pmae-paper.json", "manifest-pointm2ae-paper.json"):
            m = _manifest(name)
            shapes = {e["key"][len("module.h_encoder."):]: tuple(e["shape"]) for e in m["entries"]
                      if e["key"].startswith("module.h_encoder.")}
            assert shapes == official_encoder_shapes(m["config"])
            assert m["by_top_module"]["h_encoder"]["parameters"] == 12_654_976
