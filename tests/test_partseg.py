"""Part segmentation: the mIoU protocol on a hand-computed example, the head's shapes, and
``i2p eval partseg`` end to end on builtin:primitives and on a ShapeNetPart-layout folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from i2p.stage3_eval.partseg_metrics import partseg_metrics, predict_in_category, shape_iou

from shapenetpart_fixture import write_shapenetpart

pytestmark = pytest.mark.usefixtures("one_thread")
CLASS_PARTS = [[0, 1, 2], [3, 4], [5, 6]]
CLASSES = ["A", "B", "C"]


def test_miou_hand_computed():
    preds = [np.array([0, 1, 1, 1]), np.array([0, 0, 0, 2]), np.array([3, 3, 3, 3])]
    trues = [np.array([0, 0, 1, 1]), np.array([0, 0, 0, 2]), np.array([3, 3, 4, 4])]
    m = partseg_metrics(preds, trues, [0, 0, 1], CLASS_PARTS, CLASSES)
    # shape 1: part 0 1/2, part 1 2/3, part 2 absent from both -> 1; shape 2: 1, 1 (absent), 1;
    # shape 3 (category B only: parts 3, 4): 2/4 and 0/2
    s1, s2, s3 = (0.5 + 2 / 3 + 1) / 3, 1.0, 0.25
    assert m["shape_ious"] == pytest.approx([s1, s2, s3])
    assert m["instance_miou"] == pytest.approx((s1 + s2 + s3) / 3)  # 0.6574
    assert m["per_category_iou"] == {"A": pytest.approx((s1 + s2) / 2), "B": pytest.approx(0.25), "C": None}
    assert m["class_miou"] == pytest.approx(((s1 + s2) / 2 + 0.25) / 2)  # 0.5556: C has no shape, left out
    assert m["per_category_shapes"] == {"A": 2, "B": 1, "C": 0}
    assert m["point_accuracy"] == pytest.approx(9 / 12)
    # a part predicted but absent from the truth scores 0, not 1
    assert shape_iou(np.array([0, 0, 2]), np.array([0, 0, 0]), [0, 1, 2]) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_predict_in_category_ignores_other_categories():
    logits = np.array([[0.1, 0.2, 0.0, 9.0, 0.0, 0.0, 0.0],   # part 3 (category B) wins overall
                       [0.0, 0.0, 0.5, 0.0, 9.0, 0.0, 0.0]])
    assert predict_in_category(logits, 0, CLASS_PARTS).tolist() == [1, 2]
    assert predict_in_category(logits, 1, CLASS_PARTS).tolist() == [3, 4]


def test_head_shapes_and_gradient():
    from i2p.api.loading import load_encoder
    from i2p.stage3_eval.partseg_model import PartSegmenter, SegHeadConfig

    enc = load_encoder("random", "cpu", preset="tiny", seed=0)
    model = PartSegmenter(enc.network, (48, 96, 192), 3, 7, SegHeadConfig(propagation=(32,), hidden=(32, 16)))
    x = torch.randn(2, 300, 3) * 0.5
    out = model(x, torch.tensor([0, 2]))
    assert out.shape == (2, 300, 7)
    out[..., 0].sum().backward()
    assert model.encoder.embeds[0].parameters().__next__().grad.abs().sum() > 0  # the encoder is fine-tuned


def test_paper_recipe_is_point_m2ae():
    from i2p.api.loading import load_encoder
    from i2p.stage3_eval.partseg_model import PartSegmenter
    from i2p.stage3_eval.partseg_train import resolve

    rc = resolve("paper")
    assert (rc.epochs, rc.batch_size, rc.points, rc.lr, rc.weight_decay, rc.warmup, rc.grad_clip) == (
        300, 16, 2048, 2e-4, 0.05, 10, 10.0)
    assert resolve("paper", epochs=3, lr=None).epochs == 3 and resolve("paper", epochs=3).lr == 2e-4
    enc = load_encoder("random", "cpu", preset="paper", seed=0)
    model = PartSegmenter(enc.network, (96, 192, 384), 16, 50, rc.head, rc.local_radii)
    # Point-M2AE's convs1 takes 6208 channels: (max + mean) and per-point features 3 x 1024 each, label 64
    assert model.mlp[0][0].in_channels == 6208 and model.mlp[-1].out_channels == 50


def _run(args, tmp_path, name):
    from typer.testing import CliRunner

    from i2p.stage3_eval.cli import app

    out = tmp_path / name
    r = CliRunner().invoke(app, ["partseg", "--ckpt", "random", *args, "--epochs", "1", "--points", "256",
                                 "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return json.loads((out / "result.json").read_text()), out


BUILTIN = ["--data", "builtin:primitives?n_train=3&n_test=1"]


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    torch.set_num_threads(1)
    return _run(BUILTIN, tmp_path_factory.mktemp("partseg"), "b")


def test_eval_partseg_builtin(builtin_run):
    res, out = builtin_run
    assert res["protocol"] == "partseg" and res["schema"] == "i2p.eval.result/1"
    assert res["metrics"] == ["instance_miou", "class_miou", "point_accuracy"]
    per = res["per_category_iou"]
    assert len(per) == 13 and per["sphere"] == 1.0 and per["helix"] == 1.0  # one part: nothing to get wrong
    assert res["class_miou"] == pytest.approx(np.mean(list(per.values())))
    assert 0 < res["instance_miou"] <= 1 and res["selected_epoch"] == 1
    assert res["n_test"] == 13 and res["n_val"] >= 1 and res["n_train"] + res["n_val"] == 39
    assert res["settings"]["val"].endswith("of train (seeded)")
    with np.load(out / "partseg_samples.npz") as z:
        assert z["points"].shape == (13, 256, 3) and z["pred"].shape == z["true"].shape == (13, 256)
    again, _ = _run(BUILTIN, out.parent, "b")  # resumes the finished run: no training, same scores
    assert again["history"] == res["history"] and again["instance_miou"] == res["instance_miou"]


def test_viz_partseg_colours_are_the_parts(builtin_run, tmp_path):
    from matplotlib.colors import to_hex

    from i2p.viz.partseg import load_samples, partseg_figure, pick_rows, render_partseg

    _, out = builtin_run
    s = load_samples(out)
    rows = pick_rows(s, 3)
    assert [str(s["classes"][s["labels"][i]]) for i in rows] == ["chair", "cylinder", "cone"]  # 3 parts first
    fig = partseg_figure(s, 3)
    art = {a.get_gid(): a for ax in fig.axes for a in ax.collections}
    for r, i in enumerate(rows):
        for kind in ("true", "pred"):
            colours = [to_hex(c) for c in art[f"partseg-{kind}-{r}"].get_facecolors()]
            # same part -> same colour, different parts -> different colours
            assert len(set(zip(s[kind][i].tolist(), colours))) == len(set(colours)) == len(np.unique(s[kind][i]))
    assert "IoU" in fig.axes[1].get_title()
    png = render_partseg(out, tmp_path / "p.png", count=2)
    assert png.read_bytes().startswith(b"\x89PNG")


def test_report_shows_partseg(builtin_run):
    from i2p.report.sections import ReportInputs, _eval_section
    from i2p.stage3_eval.report import load_result

    _, out = builtin_run
    html = _eval_section(ReportInputs(run_dir=out, results=[load_result(out)]))
    assert 'alt="partseg samples"' in html and "instance mIoU" in html


def test_eval_partseg_shapenetpart_layout(tmp_path):
    root = write_shapenetpart(tmp_path / "snp", counts=(("train", 4), ("val", 2), ("test", 2)), rows=300)
    res, _ = _run(["--data", f"shapenetpart:{root}"], tmp_path, "s")
    assert set(res["per_category_iou"]) == {"Airplane", "Mug"}
    assert (res["n_train"], res["n_val"], res["n_test"]) == (8, 4, 4) and res["settings"]["val"] == "val split"
    for key in ("instance_miou", "class_miou"):
        assert 0 < res[key] <= 1
    assert set(res["fingerprints"]) == {"train", "val", "test"}


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from i2p.api.loading import load_encoder
    from i2p.common.datasets import create_dataset
    from i2p.stage3_eval import partseg_train as pt
    from i2p.stage3_eval.partseg import load_part_clouds
    from i2p.stage3_eval.partseg_model import PartSegmenter, SegHeadConfig

    ds = create_dataset("builtin:primitives?n_train=1&n_test=0", "train", num_points=256)
    pts, parts, labels, _, _ = load_part_clouds(ds, progress=False)
    data = {"train": (pts[:9], parts[:9], labels[:9]), "val": (pts[9:], parts[9:], labels[9:])}
    rc = pt.resolve("default", epochs=2, batch_size=4, points=256, head=SegHeadConfig(propagation=(16,), hidden=(16, 16)))

    def fresh():
        torch.manual_seed(0)
        enc = load_encoder("random", "cpu", preset="tiny", seed=0)
        return PartSegmenter(enc.network, (48, 96, 192), len(ds.classes), len(ds.part_names), rc.head, rc.local_radii)

    def run(model, out):
        return pt.train(model, data, out, rc, ds.class_parts, ds.classes, seed=0, device="cpu",
                        settings={"test": 1}, progress=False)

    straight = fresh()
    ref = run(straight, tmp_path / "a")
    real_epoch = pt._epoch

    def crash_in_second(model, opt, train, rc_, epoch, *a):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(model, opt, train, rc_, epoch, *a)

    monkeypatch.setattr(pt, "_epoch", crash_in_second)
    with pytest.raises(KeyboardInterrupt):
        run(fresh(), tmp_path / "b")
    monkeypatch.setattr(pt, "_epoch", real_epoch)
    resumed_model = fresh()
    resumed = run(resumed_model, tmp_path / "b")
    assert resumed["history"] == ref["history"] and len(ref["history"]) == 2
    for (k, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(Exception, match="other settings"):
        pt.train(fresh(), data, tmp_path / "b", rc, ds.class_parts, ds.classes, seed=0, device="cpu",
                 settings={"test": 2}, progress=False)
