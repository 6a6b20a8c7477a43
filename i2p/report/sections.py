"""The report's sections (summary cards, settings, training plots, figures, evaluation tables)
and the page that holds them (:func:`render_html`)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from i2p import __version__
from i2p.report.page import CSP, SELF_CHECK, STYLE, esc, fig_png, fmt, img_tag, table
from i2p.report.plots import loss_plot, probe_plot, rate_plot


@dataclass
class Section:
    title: str
    body: str
    anchor: str = ""


@dataclass
class ReportInputs:
    run_dir: Path
    config_text: str | None = None
    config: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    checkpoint: dict = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)
    figures_requested: bool = True
    notes: list[str] = field(default_factory=list)


def _summary_cards(inp: ReportInputs) -> str:
    m = [r for r in inp.metrics if "loss" in r]
    cards = []
    if m:
        last = m[-1]
        cards += [("steps", last["step"]), ("epochs", int(last.get("epoch", 0)) + 1),
                  ("last loss (3D + 2D)", f"{last['loss']:.4g}")]
        sps = sorted(r["samples_per_s"] for r in m if isinstance(r.get("samples_per_s"), (int, float)))
        if sps:
            cards.append(("median samples/s", f"{sps[len(sps) // 2]:.3g}"))
    probes = [r["probe_svm_acc"] for r in inp.metrics if isinstance(r.get("probe_svm_acc"), (int, float))]
    if probes:
        cards.append(("last probe accuracy", f"{100 * probes[-1]:.1f}%"))
    from i2p.stage3_eval.report import headline

    for res in inp.results:
        ck = (res.get("checkpoint") or {}).get("path", "")
        who = "random init" if ck == "random" else "pretrained"
        cards.append((f"{res.get('protocol')} ({who})", headline(res).replace("accuracy ", "")))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>'
        for k, v in cards) + "</div>"


def _settings_section(inp: ReportInputs) -> str:
    c = inp.config or {}
    model, optim, data = c.get("model") or {}, c.get("optim") or {}, c.get("data") or {}
    rows = [("preset", c.get("preset")), ("mask", model.get("mask_mode")), ("temperature T", model.get("temperature")),
            ("targets", model.get("targets")),
            ("lambda 2D", "automatic (gradient-norm balance, ratio %s)" % model.get("balance_ratio")
             if model.get("lambda_2d") is None and model.get("targets") == "2d3d" else model.get("lambda_2d")),
            ("global distillation ratio", model.get("global_ratio")),
            ("mask ratio", model.get("mask_ratio")), ("points", model.get("num_points")),
            ("groups per level", model.get("num_groups")), ("encoder dims", model.get("enc_dims")),
            ("encoder depths", model.get("enc_depths")), ("epochs", optim.get("epochs")),
            ("batch size", optim.get("batch_size")), ("lr", optim.get("lr")),
            ("weight decay", optim.get("weight_decay")),
            ("augment", data.get("augment")), ("normalised 2D targets", data.get("normalize_targets")),
            ("seed", c.get("seed")), ("device", c.get("device"))]
    ck = inp.checkpoint
    if ck:
        cache = ck.get("cache") or {}
        rows += [("checkpoint", ck.get("path")), ("checkpoint step", ck.get("step")),
                 ("cache", cache.get("path")), ("teacher", cache.get("teacher")),
                 ("teacher weights sha256", (cache.get("teacher_weights_sha256") or "")[:16])]
    body = table(["setting", "value"], [(k, fmt(v)) for k, v in rows if v is not None and v != ""])
    if inp.config_text:
        body += f"<details><summary>config.yaml</summary><pre>{esc(inp.config_text)}</pre></details>"
    return body


def _training_section(inp: ReportInputs) -> str:
    from i2p.report.balance_plot import balance_plot

    parts = []
    for maker, alt, cap in (
            (loss_plot, "loss curves", "Pre-training loss per step: the 3D reconstruction part and the 2D "
                                       "feature-regression part (L = L3d + lambda * L2d)."),
            (balance_plot, "2D/3D balance", "The balance of the objective: the weight each 2D term got per "
                                            "step, the ratio of the gradient norms the 2D and 3D terms send "
                                            "into the encoder, and the held-out R2 of the 2D heads."),
            (probe_plot, "probe accuracy", "Linear-SVM probe accuracy after each epoch (3-fold cross-validation "
                                           "on the probe cache): monitoring, not a test result."),
            (rate_plot, "throughput", "Training throughput (samples/s) and learning-rate schedule.")):
        png = maker(inp.metrics)
        if png is not None:
            parts.append(img_tag(png, alt, cap))
    if not parts:
        return "<p>No metrics logged yet.</p>"
    return "".join(parts)


def _gallery_section(inp: ReportInputs) -> str:
    if not inp.figures:
        if not inp.figures_requested:
            return "<p>Figures were not requested (<code>--no-figures</code>).</p>"
        return "<p>No figures (the run's cache was not found; pass <code>--cache DIR</code>).</p>"
    return "".join(img_tag(Path(p).read_bytes(), Path(p).stem, cap) for cap, p in inp.figures)


def _eval_section(inp: ReportInputs) -> str:
    from i2p.stage3_eval.report import COMPARE_HEADER, compare_rows, headline, summary_rows

    if not inp.results:
        return "<p>No evaluation results given (<code>--eval RESULT</code>).</p>"
    parts = []
    pairs = versus_rows(inp.results)
    if pairs:
        parts += ["<h3>Pretrained vs random init</h3>",
                  table(["protocol", "data", "pretrained", "random init", "difference (points)"], pairs,
                        numeric=(2, 3, 4)),
                  "<p class=\"sub\">The random-init encoder (same architecture preset, BatchNorm statistics "
                  "estimated on the training shapes) is the floor that pre-training has to beat; a negative "
                  "difference means this run has not beaten it (yet) at its scale of steps and shapes.</p>"]
    parts += ["<h3>All results</h3>", table(COMPARE_HEADER, compare_rows([r["_path"] for r in inp.results]))]
    for res in inp.results:
        ck = (res.get("checkpoint") or {}).get("path", "")
        parts.append(f"<h3>{esc(res.get('protocol'))} &mdash; {esc('random init' if ck == 'random' else ck)}: "
                     f"{esc(headline(res))}</h3>")
        if res.get("warning"):
            parts.append(f'<p class="warn">WARNING: {esc(res["warning"])}</p>')
        parts.append(f"<details><summary>all fields</summary>{table(['field', 'value'], summary_rows(res))}</details>")
        conf = Path(res["_path"]).parent / "confusion.png"
        if conf.is_file():
            who = "random init" if ck == "random" else "pretrained"
            pooled = " Queries of every episode pooled." if res.get("protocol") == "fewshot" else ""
            parts.append(img_tag(conf.read_bytes(), f"confusion {res.get('protocol')}",
                                 f"Confusion matrix ({res.get('protocol')}, {who}).{pooled}"))
        seg = _partseg_png(Path(res["_path"]).parent)
        if seg is not None:
            parts.append(img_tag(seg, "partseg samples", "Part segmentation of test shapes: true parts (left) "
                                 "and predicted (right), colour = part within the category."))
        md = Path(res["_path"]).parent / "result.md"
        if md.is_file():
            parts.append(f"<details><summary>result.md</summary><pre>{esc(md.read_text())}</pre></details>")
    return "".join(parts)


def _partseg_png(result_dir: Path) -> bytes | None:
    """A part-segmentation result's figure: its ``partseg.png`` (``i2p viz partseg``), else one
    drawn now from its ``partseg_samples.npz``; None for other results."""
    from i2p.viz.partseg import FIGURE_PNG, SAMPLES_NPZ, load_samples, partseg_figure

    if (result_dir / FIGURE_PNG).is_file():
        return (result_dir / FIGURE_PNG).read_bytes()
    if not (result_dir / SAMPLES_NPZ).is_file():
        return None
    return fig_png(partseg_figure(load_samples(result_dir)))


def _score(res: dict) -> float | None:
    for key in ("accuracy_mean", "accuracy", "instance_miou"):
        if isinstance(res.get(key), (int, float)):
            return float(res[key])
    return None


def _protocol_key(res: dict) -> tuple:
    s = res.get("settings") or {}
    detail = (s.get("way"), s.get("shot")) if res.get("protocol") == "fewshot" else ()
    return (res.get("protocol"), res.get("data"), detail)


def versus_rows(results: list[dict]) -> list[list[str]]:
    """One row per protocol (and data, few-shot way/shot) that has both a pretrained and a
    random-init result: accuracies and the difference in percentage points."""
    from i2p.stage3_eval.report import headline

    rows, seen = [], set()
    for res in results:
        if (res.get("checkpoint") or {}).get("path") == "random":
            continue
        key = _protocol_key(res)
        rand = next((r for r in results if (r.get("checkpoint") or {}).get("path") == "random"
                     and _protocol_key(r) == key), None)
        if rand is None or key in seen:
            continue
        seen.add(key)
        a, b = _score(res), _score(rand)
        name = res.get("protocol", "") + (f" {key[2][0]}-way {key[2][1]}-shot" if key[2] else "")
        diff = f"{100 * (a - b):+.2f}" if a is not None and b is not None else "n/a"
        rows.append([name, str(res.get("data", "")), headline(res).replace("accuracy ", ""),
                     headline(rand).replace("accuracy ", ""), diff])
    return rows


def render_html(inp: ReportInputs, title: str | None = None) -> str:
    title = title or f"i2p report: {inp.run_dir.name}"
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    sections = [Section("Summary", _summary_cards(inp), "summary"),
                Section("Settings", _settings_section(inp), "settings"),
                Section("Training", _training_section(inp), "training"),
                Section("Figures", _gallery_section(inp), "figures"),
                Section("Evaluation", _eval_section(inp), "evaluation")]
    notes = "".join(f'<p class="warn">{esc(n)}</p>' for n in inp.notes)
    toc = " &middot; ".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style>
<script>{SELF_CHECK}</script>
</head>
<body>
<main>
<h1>{esc(title)}</h1>
<p class="sub">run <code>{esc(inp.run_dir.resolve())}</code> &middot; written {esc(now)} by i2p {esc(__version__)}</p>
<p class="sub">{toc}</p>
{notes}
{body}
<div id="i2p-check" data-status="pending">self-check pending (needs JavaScript)</div>
</main>
</body>
</html>
"""
