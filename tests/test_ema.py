"""The weight average (``optim.ema_decay``): its arithmetic, a resume that reproduces the
uninterrupted run bit for bit (weights and average), and the average being what the
evaluation reads."""

from __future__ import annotations

import pytest
import torch

from i2p.stage2_pretrain import config as pcfg
from i2p.stage2_pretrain.ema import WeightAverage

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["model.enc_depths=[1,1,1]", "model.drop_path=0.0", "data.workers=0", "log.ckpt_every_steps=4",
        "log.progress=false", "optim.warmup_epochs=1", "data.holdout=0", "optim.batch_size=8"]


def test_average_follows_the_warmed_up_decay():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    w0 = net[0].weight.detach().clone()
    avg = WeightAverage(net, 0.8)
    for val in (1.0, -2.0, 0.5, 4.0):
        with torch.no_grad():
            net[0].weight.fill_(val)
        net[1].num_batches_tracked += 1
        avg.update(net)
    # the plain mean of the 5 weights so far (the initial ones included) ...
    assert torch.allclose(avg.state["0.weight"], (w0 + 1.0 - 2.0 + 0.5 + 4.0) / 5, rtol=0, atol=1e-6)
    assert avg.state["1.num_batches_tracked"].item() == 4  # integers are copied, not averaged
    assert avg.updates == 4 and avg.current_decay() == 0.8  # ... until its window reaches 1 / (1 - 0.8)
    expect = avg.state["0.weight"].clone()
    with torch.no_grad():
        net[0].weight.fill_(10.0)
    avg.update(net)
    assert torch.allclose(avg.state["0.weight"], 0.8 * expect + 0.2 * 10.0, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        WeightAverage(net, 1.0)
    # what the in-run probe reads: the model itself, or a copy holding the average
    from i2p.stage2_pretrain.ema import evaluated

    assert evaluated(net, None) is net
    copy = evaluated(net, avg)
    assert copy is not net and torch.equal(copy[0].weight, avg.state["0.weight"])
    assert torch.equal(net[0].weight, torch.full_like(net[0].weight, 10.0))  # the model is untouched


def test_resume_with_the_average_is_bit_exact_and_evaluation_reads_it(small_cache, tmp_path):
    from i2p.api.loading import load_encoder
    from i2p.common.checkpoint import load_checkpoint, trained_weights
    from i2p.common.errors import UserError
    from i2p.stage2_pretrain.train import pretrain

    cfg = pcfg.resolve("tiny", FAST + ["optim.epochs=2", "optim.ema_decay=0.9"])
    ref = pretrain([small_cache], str(tmp_path / "ref"), cfg)
    pretrain([small_cache], str(tmp_path / "run"), cfg, max_steps=5)  # stops mid epoch 1
    pretrain([small_cache], str(tmp_path / "run"), cfg)
    ca, cb = load_checkpoint(tmp_path / "ref" / "last.ckpt"), load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ca["model_ema"]["updates"] == ref.step == cb["model_ema"]["updates"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
        assert torch.equal(ca["model_ema"]["weights"][key], cb["model_ema"]["weights"][key]), key
    # the average is not the last weights, and it is what the frozen-feature protocols get
    moved = [k for k, v in ca["model"].items() if k.startswith("encoder.") and v.is_floating_point()
             and not torch.equal(v, ca["model_ema"]["weights"][k])]
    assert len(moved) > 10
    assert trained_weights(ca) is not ca["model"]
    enc = load_encoder(str(tmp_path / "ref" / "last.ckpt"), "cpu")
    assert enc.info["weights"] == "ema"
    got = enc.state_dict()
    want = {k[len("encoder."):]: v for k, v in ca["model_ema"]["weights"].items() if k.startswith("encoder.")}
    assert set(want) <= set(got) and all(torch.equal(got[k], want[k]) for k in want)
    # without the option, a checkpoint has no average and the last weights are read
    plain = pretrain([small_cache], str(tmp_path / "plain"), pcfg.resolve("tiny", FAST + ["optim.epochs=1"]))
    cp = load_checkpoint(tmp_path / "plain" / "last.ckpt")
    assert plain.step > 0 and "model_ema" not in cp and trained_weights(cp) is cp["model"]
    assert load_encoder(str(tmp_path / "plain" / "last.ckpt"), "cpu").info["weights"] == "last"
    with pytest.raises(UserError, match="ema_decay"):
        pretrain([small_cache], str(tmp_path / "bad"), pcfg.resolve("tiny", FAST + ["optim.ema_decay=1.5"]))
