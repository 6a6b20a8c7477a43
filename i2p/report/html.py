"""One self-contained HTML report of a pre-training run and its evaluations.

Everything is inside the file: plots and figures are PNG data URIs, the style sheet and the
small self-check script are inline, and a Content-Security-Policy forbids any other source, so
the file can be mailed, attached to a CI run or opened offline and looks the same.

The self-check script (in ``<head>``, before any image) records window errors and, on
``load``, writes into ``#i2p-check`` how many images decoded with a non-zero size out of how
many there are; a headless browser reads it back with ``--dump-dom`` (see the browser test).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from i2p import __version__
from i2p.common.errors import UserError

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")

SELF_CHECK = """
(function () {
  var errors = [];
  function note(msg) { errors.push(String(msg)); }
  window.addEventListener('error', function (e) {
    var t = e && e.target;
    if (t && t !== window && t.tagName) { note('resource error: ' + t.tagName); }
    else { note((e && e.message) || 'error'); }
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + (e && e.reason)); });
  var consoleError = console.error;
  console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' '));
                                return consoleError.apply(console, arguments); };
  window.addEventListener('load', function () {
    var imgs = document.images, ok = 0, bad = [];
    for (var i = 0; i < imgs.length; i++) {
      var im = imgs[i];
      if (im.complete && im.naturalWidth > 0 && im.naturalHeight > 0) { ok++; } else { bad.push(im.alt || ('#' + i)); }
    }
    var m = document.getElementById('i2p-check');
    m.setAttribute('data-images-ok', String(ok));
    m.setAttribute('data-images-total', String(imgs.length));
    m.setAttribute('data-errors', String(errors.length));
    m.setAttribute('data-status', 'done');
    m.textContent = 'self-check: ' + ok + '/' + imgs.length + ' images decoded; ' + errors.length + ' errors' +
      (errors.length ? ' (' + errors.join('; ') + ')' : '') + (bad.length ? '; not decoded: ' + bad.join(', ') : '');
    if (errors.length) { m.setAttribute('data-error-list', errors.join(' | ')); }
  });
})();
"""

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-bottom: 0.4rem; }
.sub { color: #666; font-size: 0.9rem; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1rem 0; }
.card { background: white; border: 1px solid #e2e2e2; border-radius: 8px; padding: 0.6rem 0.9rem; min-width: 9rem; }
.card .v { font-size: 1.3rem; font-weight: 600; }
.card .k { font-size: 0.78rem; color: #666; }
table { border-collapse: collapse; background: white; font-size: 0.85rem; margin: 0.4rem 0 1rem; }
th, td { border: 1px solid #e0e0e0; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f4f4f4; border: 1px solid #e2e2e2; padding: 0.7rem; overflow-x: auto; font-size: 0.8rem; }
figure { margin: 0.8rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e2e2; background: white; }
figcaption { font-size: 0.85rem; color: #555; margin-top: 0.2rem; }
.warn { color: #a00; font-weight: 600; }
#i2p-check { font-size: 0.75rem; color: #888; margin-top: 3rem; }
"""


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


# ---------------------------------------------------------------- helpers

def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def png_data_uri(data: bytes) -> str:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img_tag(data: bytes, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{png_data_uri(data)}" alt="{esc(alt)}">{cap}</figure>'


def fig_png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def table(header: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r in rows:
        cells = "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
                        for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)


# ---------------------------------------------------------------- reading a run

def read_metrics(path: Path) -> list[dict]:
    out = []
    if not path.is_file():
        return out
    for ln in path.read_text().splitlines():
        ln = ln.strip()
        if not ln:
            continue
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: the rest of the log is still good
    return out


def read_run(run_dir: str | Path) -> ReportInputs:
    import yaml

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    inputs = ReportInputs(run_dir=run)
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        inputs.config_text = cfg_path.read_text()
        try:
            inputs.config = yaml.safe_load(inputs.config_text) or {}
        except yaml.YAMLError:
            inputs.notes.append("config.yaml could not be parsed")
    inputs.metrics = read_metrics(run / "metrics.jsonl")
    if not inputs.config_text and not inputs.metrics:
        raise UserError(f"{run} is not a pretrain run directory (no config.yaml, no metrics.jsonl)")
    ckpt = run / "last.ckpt"
    if ckpt.is_file():
        from i2p.common.checkpoint import load_checkpoint

        try:
            ck = load_checkpoint(ckpt)
            inputs.checkpoint = {"path": str(ckpt), "step": ck.get("step"), "epoch": ck.get("epoch"),
                                 "cache": dict(ck.get("cache") or {}), "i2p_version": ck.get("i2p_version")}
        except UserError as exc:
            inputs.notes.append(str(exc))
    return inputs


# ---------------------------------------------------------------- plots

def _int_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in metrics:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], k: int) -> list[float]:
    if k <= 1 or len(ys) < k:
        return ys
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def loss_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    parts = [("loss_3d", "3D part: Chamfer-L2 of masked tokens"), ("loss_2d", "2D part: MSE to teacher features"),
             ("loss", "total loss")]
    parts = [(k, t) for k, t in parts if _series(metrics, k)[0]]
    if not parts:
        return None
    fig = Figure(figsize=(5.2 * len(parts), 3.6))
    k = max(1, len(_series(metrics, "loss")[0]) // 25)
    for i, (key, title) in enumerate(parts):
        ax = fig.add_subplot(1, len(parts), i + 1)
        xs, ys = _series(metrics, key)
        ax.plot(xs, ys, color="#9ab", lw=1, label="per step")
        if k > 1:
            ax.plot(xs, _smooth(ys, k), color="#d62728", lw=1.8, label=f"mean of {k} steps")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        _int_steps(ax)
        ax.grid(alpha=0.3)
        if all(y > 0 for y in ys) and max(ys) / max(min(ys), 1e-12) > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_png(fig)


def rate_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    xs, ys = _series(metrics, "samples_per_s")
    lx, ly = _series(metrics, "lr")
    if not xs:
        return None
    fig = Figure(figsize=(10.4, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(xs, ys, ".", ms=3, color="#1f77b4")
    med = sorted(ys)[len(ys) // 2]
    ax.axhline(med, color="#d62728", lw=1, label=f"median {med:.3g}")
    ax.set_title("throughput (samples/s, all ranks)", fontsize=10)
    ax.set_xlabel("step")
    _int_steps(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if lx:
        ax = fig.add_subplot(1, 2, 2)
        ax.plot(lx, ly, color="#2ca02c")
        ax.set_title("learning rate", fontsize=10)
        ax.set_xlabel("step")
        _int_steps(ax)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_png(fig)


def probe_plot(metrics: list[dict]) -> bytes | None:
    from matplotlib.figure import Figure

    recs = [r for r in metrics if isinstance(r.get("probe_svm_acc"), (int, float))]
    if not recs:
        return None
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    ep = [int(r.get("epoch", 0)) + 1 for r in recs]
    acc = [100 * float(r["probe_svm_acc"]) for r in recs]
    ax.plot(ep, acc, "o-", color="#9467bd")
    ax.set_xlabel("epochs completed")
    _int_steps(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("linear-SVM probe (3-fold CV on the probe cache)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig_png(fig)


# ---------------------------------------------------------------- sections

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
    body = table(["setting", "value"], [(k, _fmt(v)) for k, v in rows if v is not None and v != ""])
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
        md = Path(res["_path"]).parent / "result.md"
        if md.is_file():
            parts.append(f"<details><summary>result.md</summary><pre>{esc(md.read_text())}</pre></details>")
    return "".join(parts)


def _score(res: dict) -> float | None:
    for key in ("accuracy_mean", "accuracy"):
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


# ---------------------------------------------------------------- figures

def gallery(inp: ReportInputs, cache: str | None, out_dir: Path, samples: int = 2, recon: bool = True,
            progress=None) -> list[tuple[str, Path]]:
    """Write ``viz`` figures of ``samples`` cached shapes into ``out_dir`` (sample figures with the
    run's model sizes and seed, plus reconstructions by ``last.ckpt``); returns (caption, path)."""
    from i2p.cache import store as cs
    from i2p.viz.cli import render_recon, render_sample
    from i2p.viz.data import first_valid_indices

    cache = cache or (inp.checkpoint.get("cache") or {}).get("path")
    if not cache:
        inp.notes.append("no cache path known (the run has no last.ckpt): figures skipped; pass --cache")
        return []
    try:
        cs.open_store(cache)
    except UserError as exc:
        inp.notes.append(f"figures skipped: {exc}")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    config = str(inp.run_dir / "config.yaml") if (inp.run_dir / "config.yaml").is_file() else "paper"
    ckpt = inp.checkpoint.get("path")
    figs: list[tuple[str, Path]] = []
    for index in first_valid_indices(cache, samples):
        path = render_sample(cache, index, out_dir / f"sample-{index}.png", config=config)
        figs.append((f"viz sample --index {index}: stage-1 depth images (what the teacher saw), its saliency, "
                     "the saliency cloud and the visible/masked tokens of a 2D-guided and a random draw.", path))
        if progress:
            progress()
        if recon and ckpt:
            path = render_recon(ckpt, cache, index, out_dir / f"recon-{index}.png")
            figs.append((f"viz recon --index {index}: input, visible points and the masked tokens' points "
                         "predicted by last.ckpt.", path))
            if progress:
                progress()
    return figs


def build_report(run_dir: str | Path, out: str | Path, evals: Sequence[str | Path] = (), cache: str | None = None,
                 figures: bool = True, samples: int = 2, figures_dir: str | Path | None = None,
                 title: str | None = None, progress=None) -> Path:
    """Read the run (and results), make the figures, write ``out``; returns its path."""
    from i2p.stage3_eval.report import load_result

    inp = read_run(run_dir)
    inp.results = [load_result(r) for r in evals]
    out = Path(out)
    inp.figures_requested = bool(figures and samples > 0)
    if inp.figures_requested:
        fdir = Path(figures_dir) if figures_dir else out.parent / f"{out.stem}-figures"
        inp.figures = gallery(inp, cache, fdir, samples, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(inp, title), encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["build_report", "render_html", "read_run", "ReportInputs", "png_data_uri", "CSP"]
