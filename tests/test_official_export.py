"""``i2p export --format i2p-mae|point-m2ae``: i2p models written back in the official
checkpoint layout (issue 13 item 1, the optional part).

Round trips on the official fixture (/work/shared/fixtures/official-i2pmae/, made by the
unmodified official code): convert -> export -> the fixture's tensors bit for bit -> convert
-> the same embeddings; a paper-config model exports exactly the released manifests' keys,
shapes and dtypes; a real run exports its whole pre-training model; what the official model
cannot express is refused or reduced to the encoder with one line saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from i2p.cli import main
from i2p.common.checkpoint import save_checkpoint
from i2p.official import config as oc
from i2p.official.convert import convert_checkpoint, convert_to_dir
from i2p.official.export import export_official
from i2p.official.keys import strip_module_prefix
from i2p.official.model_keys import official_to_model
from i2p.official.params import official_model_shapes
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.mae import I2PMAE
from test_official import FIX, needs_fixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _fixture(name: str):
    return torch.load(FIX / "small" / name, map_location="cpu", weights_only=True)


def _written(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # what the official loaders read


def _small_config(**overrides) -> ModelConfig:
    """The small fixture's official model as an i2p pre-training config (official encoder and decoder)."""
    c = json.loads((FIX / "small" / "config.json").read_text())["model_config"]
    kw = dict(num_points=2048, num_groups=c["num_groups"], group_sizes=c["group_sizes"], enc_dims=c["encoder_dims"],
              enc_depths=c["encoder_depths"], num_heads=c["num_heads"], dec_dims=c["decoder_dims"],
              dec_depths=c["decoder_depths"], dec_up_blocks=c["decoder_up_blocks"][0], token_merge="official",
              decoder_style="official", teacher_channels=c["clip_config"]["feat_dim"], lambda_2d=1.0)
    return ModelConfig(**{**kw, **overrides})


def _official_tiny(**kw) -> ModelConfig:
    return ModelConfig.tiny(token_merge="official", enc_depths=(1, 1, 1), embed_hidden=(128, 256), **kw)


def _run_checkpoint(path: Path, model: I2PMAE, epoch: int = 3) -> Path:
    """An ``i2p pretrain`` checkpoint holding ``model`` (what the exporter reads of a run)."""
    save_checkpoint({"model": model.state_dict(), "config": {"model": model.cfg.to_dict()}, "epoch": epoch,
                     "step": 7}, path / "last.ckpt")
    return path


@needs_fixture
def test_convert_export_convert_round_trip_on_the_fixture(tmp_path, capsys):
    conv = convert_to_dir(FIX / "small" / "state_dict.pt", "i2p-mae", tmp_path / "conv", FIX / "small" / "config.json")
    off = tmp_path / "off"
    assert main(["export", "--ckpt", str(conv), "--out", str(off), "--format", "i2p-mae"]) == 0
    err = capsys.readouterr().err
    assert "encoder only: the source is an export directory" in err
    written = _written(off / "i2p-mae.pth")
    assert {"base_model", "optimizer", "epoch", "metrics", "best_metrics"} <= set(written)
    original = strip_module_prefix(_fixture("state_dict.pt")["base_model"])
    enc_keys = [k for k in original if k.startswith("h_encoder.")]
    base = written["base_model"]
    assert list(base) == enc_keys and len(enc_keys) == 105  # unprefixed, in the official order
    for k in enc_keys:
        assert base[k].dtype == original[k].dtype and torch.equal(base[k], original[k]), k
    # the YAML beside it is the official model section: it reads back as the fixture's model config
    section = oc.read_model_section(off / "i2p-mae.yaml")
    fixture_cfg = json.loads((FIX / "small" / "config.json").read_text())["model_config"]
    for key in ("NAME", "group_sizes", "num_groups", "encoder_dims", "encoder_depths", "num_heads",
                "decoder_dims", "decoder_depths", "decoder_up_blocks", "local_radius", "mask_ratio"):
        assert section[key] == fixture_cfg[key], key
    # convert again: the same encoder, the same embeddings (and still the official ones)
    again = convert_to_dir(off / "i2p-mae.pth", "i2p-mae", tmp_path / "conv2", off / "i2p-mae.yaml")
    import i2p

    a, b = i2p.load_encoder(str(conv), device="cpu"), i2p.load_encoder(str(again), device="cpu")
    points = _fixture("inputs.pt")["points"]
    za, zb = a.embed(points, normalize=False), b.embed(points, normalize=False)
    assert (za - zb).abs().max().item() <= 1e-6
    assert (zb - _fixture("outputs.pt")["svm_feature"]).abs().max().item() <= 2e-5


@needs_fixture
def test_whole_pre_training_model_of_a_run_is_the_official_checkpoint(tmp_path):
    """A run whose model is the fixture's (official encoder and decoder) exports every one of
    the fixture's 163 tensors bit for bit, in its order, with its dtypes."""
    original = _fixture("state_dict.pt")["base_model"]
    model = I2PMAE(_small_config())
    mine, bad = official_to_model(strip_module_prefix(original))
    assert bad == []
    model.load_state_dict(mine, strict=True)
    run = _run_checkpoint(tmp_path / "run", model)
    res = export_official(run, tmp_path / "dp", "i2p-mae", module_prefix=True)
    assert res.whole_model and res.note == "" and res.keys == 163
    base = _written(res.checkpoint)["base_model"]
    assert list(base) == list(original)
    for k in original:
        assert base[k].dtype == original[k].dtype and torch.equal(base[k], original[k]), k
    # the default layout: the same without 'module.' (what the official fine-tuning loader needs)
    res = export_official(run / "last.ckpt", tmp_path / "ddp", "i2p-mae")
    plain = _written(res.checkpoint)
    assert list(plain["base_model"]) == [k[len("module."):] for k in original]
    assert plain["epoch"] == 3 and plain["optimizer"] is None and plain["i2p"]["whole_model"] is True


def _manifest(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    path = FIX / f"manifest-{name}-paper.json"
    return [(e["key"], tuple(e["shape"]), e["dtype"]) for e in json.loads(path.read_text())["entries"]]


@needs_fixture
def test_paper_config_exports_the_released_manifests(tmp_path, capsys):
    i2pmae, pm2ae = _manifest("i2pmae"), _manifest("pointm2ae")
    # the table every export is checked against: the manifests, order included
    for source, manifest in (("i2p-mae", i2pmae), ("point-m2ae", pm2ae)):
        assert [("module." + k, s) for k, s in official_model_shapes(oc.paper_config(source), source).items()] == \
            [(k, s) for k, s, _ in manifest]
    torch.manual_seed(0)
    run = _run_checkpoint(tmp_path / "run", I2PMAE(ModelConfig.paper(token_merge="official", teacher_channels=512)))
    res = export_official(run, tmp_path / "i2p", "i2p-mae", module_prefix=True)
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
           for k, v in _written(res.checkpoint)["base_model"].items()]
    assert got == i2pmae and res.parameters == 17_622_808
    assert oc.read_model_section(res.config) == oc.paper_config("i2p-mae")
    # Point-M2AE: its 3D head (rec_head, 3 x group_sizes[0]) is not i2p's, so the encoder, said in one line
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "m2ae"), "--format", "point-m2ae",
                 "--module-prefix"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("encoder only:") and "rec_head.weight" in err[0]
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", ""))
           for k, v in _written(tmp_path / "m2ae" / "point-m2ae.pth")["base_model"].items()]
    assert got == [e for e in pm2ae if e[0].startswith("module.h_encoder.")] and len(got) == 237
    assert oc.read_model_section(tmp_path / "m2ae" / "point-m2ae.yaml") == oc.paper_config("point-m2ae")


FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.progress=false",
        "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8", "log.diag_every_steps=0",
        "model.token_merge=official", "model.decoder_style=official", "model.embed_hidden=[128,256]"]


def test_a_trained_run_exports_its_whole_model_and_converts_back(small_cache, tmp_path, capsys):
    from i2p.common.checkpoint import load_checkpoint
    from i2p.stage2_pretrain import config as pcfg
    from i2p.stage2_pretrain.train import pretrain

    run = tmp_path / "run"
    pretrain(small_cache, str(run), pcfg.resolve("tiny", FAST), max_steps=2)
    out = tmp_path / "off"
    assert main(["export", "--ckpt", str(run), "--out", str(out), "--format", "i2p-mae"]) == 0
    assert "whole pre-training model" in capsys.readouterr().out
    trained = load_checkpoint(run / "last.ckpt")["model"]
    base = _written(out / "i2p-mae.pth")["base_model"]
    back, bad = official_to_model(base)
    assert bad == [] and sorted(back) == sorted(trained)
    for k, v in trained.items():
        assert torch.equal(back[k], v), k
    bn = "token_prop.0.extraction.operation.0.net2.1.running_mean"
    assert base[bn].abs().max() > 0  # trained decoder statistics, not an init
    section = oc.read_model_section(out / "i2p-mae.yaml")
    assert section["clip_config"]["feat_dim"] == 8  # the cache teacher's width sizes rec_head_2d
    conv = convert_checkpoint(out / "i2p-mae.pth", "i2p-mae", section)
    enc = {k[len("encoder."):]: v for k, v in trained.items() if k.startswith("encoder.")}
    assert list(conv.state) == list(enc) and all(torch.equal(conv.state[k], enc[k]) for k in enc)


def test_what_the_official_model_cannot_express(tmp_path, capsys):
    # our decoder: the encoder only, and one line that says why
    run = _run_checkpoint(tmp_path / "a", I2PMAE(_official_tiny(teacher_channels=8)))
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "a_out"), "--format", "i2p-mae"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decoder_style is 'i2p'" in err[0]
    assert all(k.startswith("h_encoder.") for k in _written(tmp_path / "a_out" / "i2p-mae.pth")["base_model"])
    # an i2p-only head (global distillation) has no official name
    cfg = _official_tiny(decoder_style="official", global_ratio=0.1, teacher_channels=8)
    res = export_official(_run_checkpoint(tmp_path / "b", I2PMAE(cfg)), tmp_path / "b_out", "i2p-mae")
    assert not res.whole_model and "head_global.weight" in res.note
    # the 3D-only objective has no 2D head: the official I2P_MAE always has rec_head_2d
    cfg = _official_tiny(decoder_style="official", targets="3d")
    res = export_official(_run_checkpoint(tmp_path / "c", I2PMAE(cfg)), tmp_path / "c_out", "i2p-mae")
    assert not res.whole_model and "rec_head_2d.weight" in res.note
    # i2p's own token merging: refused in one line, nothing written
    run = _run_checkpoint(tmp_path / "d", I2PMAE(ModelConfig.tiny(enc_depths=(1, 1, 1), teacher_channels=8)))
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "d_out"), "--format", "i2p-mae"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "official architecture" in err[0] and "model.token_merge='i2p'" in err[0]
    assert not (tmp_path / "d_out").exists()


def test_options_and_the_default_export_are_unchanged(tmp_path, capsys):
    from i2p.api.export_run import export_encoder

    run = _run_checkpoint(tmp_path / "run", I2PMAE(_official_tiny(targets="3d")))
    for extra, msg in ((["--module-prefix"], "--module-prefix applies to --format i2p-mae"),
                       (["--format", "i2p-mae", "--pool", "max"], "--pool applies to --format i2p only"),
                       (["--format", "pointm2ae"], "--format must be one of i2p, i2p-mae, point-m2ae")):
        assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "x"), *extra]) == 2
        assert msg in capsys.readouterr().err
    # without --format: the i2p export, byte for byte what export_encoder writes
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    export_encoder(str(run), tmp_path / "api", device="cpu")
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name


def test_the_official_files_are_written_atomically(tmp_path, monkeypatch):
    run = _run_checkpoint(tmp_path / "run", I2PMAE(_official_tiny(targets="3d")))
    res = export_official(run, tmp_path / "out", "i2p-mae")
    before = res.checkpoint.read_bytes()
    real_save = torch.save

    def dies_halfway(obj, f, *a, **k):
        real_save({"partial": torch.zeros(3)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        export_official(run, tmp_path / "out", "i2p-mae")
    assert res.checkpoint.read_bytes() == before  # the previous file, intact
    assert not res.config.exists()  # and no YAML claiming a complete pair
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["i2p-mae.pth"]  # no temporary left
