"""P13/P14 of docs/FIDELITY.md: ``model.decoder_style: official`` (the ``paper`` preset's) is the
official decoder: PointNetFeaturePropagation token propagation (Conv-BN-GELU fuse and residual
Conv-BN blocks) and the official init. Its parameters have the official checkpoint's keys and
shapes (the manifest, and the small fixture loads strictly); its computation equals the
official Conv1d form; training with it resumes bit for bit, and its runs export encoders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from i2p.official.keys import strip_module_prefix
from test_official import FIX
from i2p.official.model_keys import model_to_official_name, official_shape, official_to_model
from i2p.official.params import PAPER_MODEL_PARAMETERS, count_parameters
from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.model.config import ModelConfig
from i2p.stage2_pretrain.model.decoder import OfficialFuse
from i2p.stage2_pretrain.model.mae import I2PMAE
from i2p.stage2_pretrain.train import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURES = Path(FIX or "/nonexistent")


def _paper_official() -> I2PMAE:
    torch.manual_seed(0)
    return I2PMAE(ModelConfig.paper(token_merge="official", teacher_channels=512))


def test_styles_of_the_presets():
    assert ModelConfig.base().decoder_style == "i2p" and ModelConfig.tiny().decoder_style == "i2p"
    assert ModelConfig.paper().decoder_style == "official"
    assert pcfg.resolve("paper").model.decoder_style == "official"
    assert pcfg.resolve("base").model.decoder_style == "i2p"
    base = I2PMAE(ModelConfig.tiny(teacher_channels=8))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in base.decoder.modules())  # ours: no batch statistics
    with pytest.raises(ValueError, match="decoder_style"):
        ModelConfig.tiny(decoder_style="pointnet")


def test_official_decoder_has_the_official_keys_shapes_and_count():
    model = _paper_official()
    mapped = {}
    for name, t in model.state_dict().items():
        off = model_to_official_name(name)
        assert off is not None, name
        mapped[off] = official_shape(off, tuple(t.shape))
    assert len(mapped) == 295
    assert count_parameters(model) == PAPER_MODEL_PARAMETERS == 17_622_808  # the manifest's 'num_parameters'
    dec = {k: v for k, v in mapped.items() if not k.startswith("h_encoder.")}
    # the official decoder and heads (modules.py:118-169, I2P_MAE.py:223-261), by hand
    assert dec["token_prop.0.fuse.net.0.weight"] == (192, 576, 1)
    assert dec["token_prop.0.extraction.operation.0.net2.1.running_var"] == (192,)
    assert dec["mask_token"] == (1, 384) and dec["rec_head_2d.weight"] == (12288, 192, 1)
    assert sum(math.prod(s) for k, s in dec.items() if k.startswith("token_prop.")
               and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == 186_048
    manifest = FIXTURES / "manifest-i2pmae-paper.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        want = {e["key"][len("module."):]: tuple(e["shape"]) for e in m["entries"]}
        assert mapped == want
        assert m["num_parameters"] == PAPER_MODEL_PARAMETERS
    # ours differs only in the propagation (no residual block, LayerNorm instead of BatchNorm)
    torch.manual_seed(0)
    ours = I2PMAE(ModelConfig.paper(token_merge="official", teacher_channels=512, decoder_style="i2p"))
    assert count_parameters(ours) == PAPER_MODEL_PARAMETERS - 2 * (192 * 192 + 192 + 2 * 192)


def _small_fixture():
    path = FIXTURES / "small" / "state_dict.pt"
    if not path.is_file():
        pytest.skip("official fixtures not present")
    c = json.loads((FIXTURES / "small" / "config.json").read_text())["model_config"]
    cfg = ModelConfig(num_points=2048, num_groups=c["num_groups"], group_sizes=c["group_sizes"],
                      enc_dims=c["encoder_dims"], enc_depths=c["encoder_depths"], num_heads=c["num_heads"],
                      dec_dims=c["decoder_dims"], dec_depths=c["decoder_depths"],
                      dec_up_blocks=c["decoder_up_blocks"][0], token_merge="official", decoder_style="official",
                      teacher_channels=c["clip_config"]["feat_dim"], lambda_2d=1.0)
    state = strip_module_prefix(torch.load(path, weights_only=True)["base_model"])
    return cfg, state


def test_small_official_checkpoint_loads_strictly():
    cfg, state = _small_fixture()
    mine, bad = official_to_model(state)
    assert bad == []
    model = I2PMAE(cfg)
    model.load_state_dict(mine, strict=True)
    assert torch.equal(model.decoder.fuse[0].fuse.linear.weight, state["token_prop.0.fuse.net.0.weight"][..., 0])


class _ConvForm(nn.Module):
    """The official token propagation after interpolation, written as the official code runs it
    (models/modules.py:54-169): Conv1d kernel 1 and BatchNorm1d on ``[B, C, N]``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out), nn.GELU())
        self.net1 = nn.Sequential(nn.Conv1d(c_out, c_out, 1), nn.BatchNorm1d(c_out), nn.GELU())
        self.net2 = nn.Sequential(nn.Conv1d(c_out, c_out, 1), nn.BatchNorm1d(c_out))

    def forward(self, x):  # [B, N, C] -> [B, N, C_out]
        x = self.fuse(x.permute(0, 2, 1))
        return nn.functional.gelu(self.net2(self.net1(x)) + x).permute(0, 2, 1)


def test_official_fuse_computes_the_official_conv_form():
    cfg, state = _small_fixture()
    ref = _ConvForm(96 + 48, 48)
    ref.load_state_dict({
        **{f"fuse.{i}.{f}": state[f"token_prop.0.fuse.net.{i}.{f}"] for i, fs in ((0, ("weight", "bias")),
           (1, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))) for f in fs},
        **{f"{n}.{i}.{f}": state[f"token_prop.0.extraction.operation.0.{n}.{i}.{f}"] for n in ("net1", "net2")
           for i, fs in ((0, ("weight", "bias")),
                         (1, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))) for f in fs},
    })
    model = I2PMAE(cfg)
    model.load_state_dict(official_to_model(state)[0])
    fuse = model.decoder.fuse[0]
    assert isinstance(fuse, OfficialFuse)
    x = torch.randn(3, 128, 144, generator=torch.Generator().manual_seed(0))
    ref.eval()
    fuse.eval()  # the running statistics of the checkpoint
    torch.testing.assert_close(fuse(x), ref(x), rtol=0, atol=2e-5)
    # the residual block matters: without it the output moves by far more than the tolerance
    assert (fuse.fuse(x) - ref(x)).abs().max() > 0.1
    ref.train()
    fuse.train()  # batch statistics over all B*N tokens, and the running statistics updated alike
    torch.testing.assert_close(fuse(x), ref(x), rtol=0, atol=2e-5)
    torch.testing.assert_close(fuse.extraction[0].net1.bn.running_mean, ref.net1[1].running_mean)


def test_official_init():
    model = _paper_official()
    dec = model.decoder
    for name, m in dec.stacks.named_modules():
        if isinstance(m, nn.Linear):  # xavier-uniform: U(+-sqrt(6 / (fan_in + fan_out))), zero bias
            bound = math.sqrt(6.0 / (m.in_features + m.out_features))
            w = m.weight.detach()
            assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound, name
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03), name
            assert m.bias is None or not m.bias.any(), name
    # PyTorch's default elsewhere (Linear = Conv1d kernel 1): U(+-1/sqrt(fan_in)), biases too
    for lin in (dec.pos_embeds[0][2], dec.fuse[0].fuse.linear, model.head_2d):
        bound = 1 / math.sqrt(lin.in_features)
        assert lin.weight.abs().max() <= bound and lin.weight.std().item() == pytest.approx(
            bound / math.sqrt(3), rel=0.05)
        assert lin.bias.abs().max() > 0.5 * bound
    assert dec.mask_token.std().item() == pytest.approx(0.02, rel=0.2)
    # ours: truncated normal 0.02 everywhere, zero biases
    torch.manual_seed(0)
    ours = I2PMAE(ModelConfig.paper(teacher_channels=512, decoder_style="i2p"))
    w = ours.decoder.stacks[0].blocks[0].mlp[0].weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05) and not ours.head_2d.bias.any()


FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.progress=false",
        "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8", "log.diag_every_steps=0",
        "log.ckpt_every_steps=2", "model.decoder_style=official"]


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_resume_and_export_with_the_official_decoder(small_cache, tmp_path):
    import i2p
    from i2p.common.checkpoint import load_checkpoint

    cfg = pcfg.resolve("tiny", FAST)
    ref, run = tmp_path / "ref", tmp_path / "run"
    pretrain(small_cache, str(ref), cfg, max_steps=5)
    pretrain(small_cache, str(run), cfg, max_steps=3)
    assert pretrain(small_cache, str(run), cfg, max_steps=5).step == 5  # resumed from step 3
    a, b = _losses(ref), _losses(run)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5] and a == b
    ca, cb = load_checkpoint(ref / "last.ckpt")["model"], load_checkpoint(run / "last.ckpt")["model"]
    bn = "decoder.fuse.0.extraction.0.net2.bn.running_mean"
    assert bn in ca and ca[bn].abs().max() > 0  # the decoder's BatchNorm statistics are saved ...
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k  # ... and restored exactly
    # the encoder of such a run loads as any other (the decoder is not part of it)
    enc = i2p.load_encoder(str(run), device="cpu")
    z = enc.embed(torch.randn(2, 1024, 3, generator=torch.Generator().manual_seed(0)))
    assert z.shape == (2, 672) and torch.isfinite(z).all()


def test_a_checkpoint_saved_before_the_decoder_style_existed_still_resumes():
    from i2p.stage2_pretrain.train import _same_model

    cfg = pcfg.resolve("tiny")
    saved = pcfg.to_dict(cfg)["model"]
    old = {k: v for k, v in saved.items() if k not in ("decoder_style", "dec_up_blocks")}
    assert _same_model(saved, cfg) and _same_model(old, cfg)  # missing fields = their defaults ('i2p')
    assert not _same_model(old, pcfg.resolve("tiny", ["model.decoder_style=official"]))
    assert not _same_model({**saved, "enc_dims": [24, 48, 96]}, cfg) and not _same_model(None, cfg)


def test_official_weight_decay_exemptions_of_the_whole_official_style_model():
    """``optim.decay_exempt: official`` on the official-style model exempts exactly what the
    official ``add_weight_decay`` exempts (tools/builder.py:51-58): 1-D tensors, ``*.bias`` and
    every name containing 'token', judged on the official names and shapes."""
    from i2p.stage2_pretrain.model.mae import decay_exempt

    model = _paper_official()
    ours, official = set(), set()
    for name, p in model.named_parameters():
        off = model_to_official_name(name)
        shape = official_shape(off, tuple(p.shape))
        if len(shape) == 1 or off.endswith(".bias") or "token" in off:
            official.add(name)
        if decay_exempt(name, p, "official"):
            ours.add(name)
    assert ours == official
    assert "decoder.fuse.0.extraction.0.net1.linear.weight" in ours  # token_prop: exempt by name
    assert "decoder.stacks.0.blocks.0.mlp.0.weight" not in ours
