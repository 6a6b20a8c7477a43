"""The building blocks of a self-contained HTML page: the Content-Security-Policy, the inline
style sheet and self-check script, escaping, PNG data URIs, figures and tables.

The self-check script (in ``<head>``, before any image) records window errors and, on
``load``, writes into ``#i2p-check`` how many images decoded with a non-zero size out of how
many there are; a headless browser reads it back with ``--dump-dom`` (see the browser test).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Iterable, Sequence

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


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return "" if v is None else str(v)
