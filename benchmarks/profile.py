"""Where a stage-2 step spends its time: ``python -m benchmarks.profile [--model paper] [--batch 4]``.

Two views of the same training step (synthetic cloud and 14x14x512 maps, the shapes a real
cache gives):

1. per phase, timed by calling the model's parts in the order ``I2PMAE.forward`` does
   (tokenise, saliency cloud + masking, encoder, decoder, heads + losses), then backward and
   the AdamW step; beside them the online teacher's share (project + CLIP ViT-B/16 forward on
   the same batch), which is what the cache removes from every step;
2. ``torch.profiler``'s top operators of the whole step by self CPU time.

Prints both and writes them as JSON with ``--out FILE``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from benchmarks.common import median, sync


def _timed(fn, repeats: int):
    fn()
    ts, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return median(ts), out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "paper"), default="paper")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--teacher", default="clip-vitb16", help="teacher for the online share ('' to skip)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--target-dims", type=int, default=None,
                   help="model.target_dims (default: the preset's; a random orthonormal basis stands in for the cache's)")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from torch.profiler import ProfilerActivity, profile

    from i2p.common.point_ops import chamfer_l2
    from i2p.stage1_project.projection import project, projection_params, to_teacher_input
    from i2p.stage2_pretrain.model import ModelConfig, build_model
    from i2p.stage2_pretrain.model.mae import optimizer_groups
    from i2p.stage2_pretrain.train import make_optimizer
    from i2p.stage2_pretrain.model.masking import all_visibilities, coarse_visibility
    from i2p.stage2_pretrain.model.targets import feature_targets, project_channels, saliency_cloud

    torch.manual_seed(0)
    over = {} if a.target_dims is None else {"target_dims": a.target_dims}
    cfg = (ModelConfig.paper if a.model == "paper" else ModelConfig.tiny)(teacher_channels=512, num_points=2048, **over)
    model = build_model(cfg).train()
    basis = None
    if cfg.projects_targets:  # timing only: any orthonormal basis costs what the cache's does
        basis = torch.linalg.qr(torch.randn(512, cfg.target_dims))[0]
        model.set_target_basis(basis)
    opt = make_optimizer(optimizer_groups(model, 0.05), lr=1e-3)
    b = a.batch
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(b, cfg.num_points, 3, generator=g) * torch.tensor([1.0, 0.6, 0.3])
    pts = pts / pts.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    feats = torch.randn(b, 3, 14, 14, 512, generator=g).half()
    sal = torch.rand(b, 3, 14, 14, generator=g)
    proj = projection_params(pts)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(b)]  # noqa: E731
    top = cfg.num_levels - 1
    lvl = cfg.head_level

    phases = {}
    phases["tokenise (FPS + kNN, 3 levels)"], h = _timed(lambda: model.encoder.group(pts), a.repeats)

    def masking():
        s = saliency_cloud(sal, pts, h, proj, cfg.image_size)
        v = coarse_visibility(s, b, cfg.num_groups[top], cfg.num_visible(), cfg.mask_mode, cfg.temperature, gens())
        return all_visibilities(v, h.groups, cfg.num_groups)

    phases["saliency cloud + masking"], vis = _timed(masking, a.repeats)
    phases["encoder (embed + blocks, visible)"], enc = _timed(
        lambda: model.encoder.forward_hierarchy(h, vis, gens()), a.repeats)
    phases["decoder"], x = _timed(lambda: model.decoder(h, enc, gens()), a.repeats)
    b_idx, g_idx = vis[lvl].nonzero(as_tuple=True)
    maps = (lambda: project_channels(feats, basis)) if basis is not None else (lambda: feats)  # noqa: E731
    phases["2D targets (project, back-project)"], _ = _timed(
        lambda: feature_targets(maps(), pts, h, lvl, proj, cfg.image_size, b_idx, g_idx), a.repeats)

    def heads():
        mb, mg = (~vis[lvl]).nonzero(as_tuple=True)
        k = cfg.group_sizes[lvl]
        pred = model.head_3d(x[mb, mg]).float().view(-1, k, 3)
        chamfer_l2(pred, h.neighbors[lvl][mb, mg].float())
        return model._loss_2d(x, vis[lvl], pts, h, feats, proj) if cfg.use_2d else None

    t_heads, _ = _timed(heads, a.repeats)
    phases["heads + losses (without the targets)"] = max(0.0, t_heads - phases["2D targets (project, back-project)"])

    def forward():
        return model(pts, feats, sal, proj, generator=gens())

    def fwd_bwd():
        out = forward()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()

    def step():
        fwd_bwd()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    t_fwd, _ = _timed(forward, a.repeats)
    t_fb, _ = _timed(fwd_bwd, a.repeats)
    t_step, _ = _timed(step, a.repeats)
    phases["backward"] = max(0.0, t_fb - t_fwd)
    phases["grad clip + AdamW"] = max(0.0, t_step - t_fb)
    report = {"model": a.model, "batch": b, "threads": torch.get_num_threads(), "step_s": t_step,
              "forward_s": t_fwd, "phases_s": phases}
    if a.teacher:
        from i2p.stage1_project.teachers import create_teacher

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            teacher = create_teacher(a.teacher, weights="random")
        report["online_project_s"], depth = _timed(lambda: project(pts)[0], a.repeats)
        images = to_teacher_input(depth, teacher.mean, teacher.std)
        report["online_teacher_s"], _ = _timed(lambda: teacher(images), a.repeats)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ka = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    report["top_ops"] = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                          "calls": e.count} for e in ka[:a.top]]
    report["op_calls_per_step"] = int(sum(e.count for e in ka))

    print(f"{a.model} model, batch {b}, {report['threads']} threads: step {t_step * 1e3:.0f} ms "
          f"(forward {t_fwd * 1e3:.0f} ms; the forward phases below are timed one by one)")
    for k, v in phases.items():
        print(f"  {k:38s} {v * 1e3:8.1f} ms  {100 * v / t_step:5.1f}%")
    if a.teacher:
        print(f"  online teacher instead of the cache: project {report['online_project_s'] * 1e3:.0f} ms + "
              f"{a.teacher} forward {report['online_teacher_s'] * 1e3:.0f} ms "
              f"({report['online_teacher_s'] / t_step:.1f}x the whole cached step)")
    print(f"top operators ({report['op_calls_per_step']} op calls per step):")
    for r in report["top_ops"]:
        print(f"  {r['op'][:60]:60s} {r['self_ms']:8.1f} ms  {100 * r['share']:5.1f}%  x{r['calls']}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
