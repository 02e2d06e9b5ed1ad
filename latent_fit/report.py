"""OUT/index.html: a static page of a run's outputs that opens from disk without a server.

It reads only what the run left in OUT (metrics.json or sweep.csv, and the PNGs) and refers to
the images by relative links, so the folder can be moved or zipped whole. Whatever else lies in
OUT is read with the guards of inputs: regular files only (a FIFO never blocks), tables within
MAX_TABLE_BYTES, images only within images.MAX_PIXELS, by their header.
"""

from __future__ import annotations

import csv
import html
import io
import math
import warnings
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from .errors import LatentFitError
from .fields import parse_json
from .files import atomic_write
from .generators.untrusted import read_capped
from .images import MAX_PIXELS

KINDS = ("project", "edit", "sweep")
ROW_HEIGHT = 192  # pixels a target's comparison strip is shown at
MAX_TABLE_BYTES = 2**26  # of metrics.json or sweep.csv (about 100 bytes a row)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figcaption{font-size:.9em;color:#555}
img{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{cursor:pointer;background:#eee;user-select:none}
th:after{content:" \\2195";color:#aaa}
td:first-child,th:first-child{text-align:left}
.note{background:#fff;border-left:3px solid #c33;padding:.4em .8em}
"""

# Click a column header to sort by it (numbers as numbers, empty cells last); click again to reverse.
_SORT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? "asc" : "desc";
      function key(r) { var c = r.cells[col]; return c.dataset.v !== undefined ? c.dataset.v : c.textContent; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") return (x === "") - (y === "");
        var nx = parseFloat(x), ny = parseFloat(y);
        var d = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _cell(value) -> str:
    """A table cell: numbers shown to 4 significant digits, sorted by their full value."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v=""></td>'
    try:
        x = float(value)
    except (TypeError, ValueError):
        return f"<td>{html.escape(str(value))}</td>"
    shown = f"{x:.4g}" if math.isfinite(x) else str(x)
    return f'<td data-v="{x!r}">{html.escape(shown)}</td>'


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>No metrics in this folder.</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "\n".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def _img(out: Path, name: str, height: int = ROW_HEIGHT) -> str:
    """<img> of out/name (an absolute path: linked as a file: URI) scaled to `height` (never above
    its width at 4x), or "" unless it is a regular file whose header Pillow reads and whose size is
    within images.MAX_PIXELS (the guards of inputs: a FIFO is never opened, a decompression bomb
    never decoded, here or in a browser)."""
    path = out / name
    if not path.is_file():  # follows symlinks, opens nothing
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return ""
    if not 0 < w * h <= MAX_PIXELS:
        return ""
    scale = min(height / h, 4.0) if h < height else 1.0
    src = path.as_uri() if Path(name).is_absolute() else quote(name, errors="surrogateescape")
    return (
        f'<img src="{html.escape(src)}" width="{round(w * scale)}" height="{round(h * scale)}" '
        f'alt="{html.escape(name)}">'
    )


def _text(path: Path) -> str:
    """The text of a regular file of at most MAX_TABLE_BYTES ("" for anything else)."""
    try:
        return read_capped(path, MAX_TABLE_BYTES).decode("utf-8", "surrogateescape")
    except (LatentFitError, OSError):
        return ""


def _read_rows(out: Path, kind: str) -> list[dict]:
    if kind == "sweep":
        try:
            return list(csv.DictReader(io.StringIO(_text(out / "sweep.csv"), newline="")))
        except csv.Error:  # e.g. a field over csv's size limit
            return []
    try:
        rows = parse_json(_text(out / "metrics.json"), "metrics.json", list, MAX_TABLE_BYTES)
    except LatentFitError:
        return []
    return [r for r in rows if isinstance(r, dict) and "target" in r]


def _gallery(out: Path, kind: str, rows: list[dict]) -> tuple[str, set[str]]:
    """Every target's comparison strip (its plain PNG where the strip is missing), and the image
    names shown."""
    caption = {"project": "target | projection | difference ×4", "edit": "before | request | after"}[kind]
    parts, shown = [], set()
    for r in rows:
        stem = str(r["target"])
        names = [n for n in (f"{stem}_compare.png", f"{stem}.png") if (out / n).is_file()]
        if not names:
            continue
        shown |= set(names)
        what = caption if names[0].endswith("_compare.png") else names[0]
        parts.append(
            f'<figure id="{html.escape(stem)}">{_img(out, names[0])}<figcaption>'
            f"{html.escape(stem)}: {html.escape(what)}</figcaption></figure>"
        )
    return "\n".join(parts) or "<p>No complete targets yet.</p>", shown


def _number(value) -> float:
    """A table value as a number to sort by (0 for anything else: the rows are read from OUT)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _photos(out: Path, rows: list[dict]) -> tuple[str, set[str]]:
    """For every photo the targets were cut from (their rows' `photo`): the photo, each face's
    aligned crop and the photo with the results (<first stem>_photo.png); the image names shown."""
    faces: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (str(r.get("photo")), _number(r.get("photo_face")))):
        if r.get("photo"):
            faces.setdefault(str(r["photo"]), []).append(str(r["target"]))
    parts, shown = [], set()
    for photo, stems in faces.items():
        crops = [f"{s}_aligned.png" for s in stems]
        result = f"{stems[0]}_photo.png"
        shown |= set(crops) | {result}
        figures = [(photo, "the photo")] + [(c, f"{s}: aligned crop") for c, s in zip(crops, stems)]
        figures.append((result, "the photo with the results"))
        parts.append(
            f"<div>{''.join(f'<figure>{_img(out, n)}<figcaption>{html.escape(t)}</figcaption></figure>' for n, t in figures)}</div>"
        )
    return "\n".join(parts), shown


def render_report(out: Path, kind: str, note: str = "") -> str:
    """The HTML text of OUT's report (see write_report)."""
    if kind not in KINDS:
        raise ValueError(f"report kind {kind!r}: one of {', '.join(KINDS)}")
    out = Path(out)
    rows = _read_rows(out, kind)
    sections = [f"<h1>latent-fit {kind}: {html.escape(out.resolve().name)}</h1>"]
    if note:
        sections.append(f'<p class="note">{html.escape(note)}</p>')
    shown: set[str] = set()
    if kind == "sweep":
        for name, title, height in (
            ("sweep.png", "Fidelity against realism (w_r) or locality (tune_reg)", 0),
            ("grid.png", "Images at every swept value", ROW_HEIGHT),
        ):
            if (out / name).is_file():
                sections.append(f"<h2>{title}</h2>{_img(out, name, height)}")
                shown.add(name)
        sections.append("<h2>sweep.csv</h2>" + _table(rows))
    else:
        gallery, shown = _gallery(out, kind, rows)
        photos, in_photos = _photos(out, rows)
        shown |= in_photos
        if rows:  # a direction edit has images only
            sections += ["<h2>Metrics (click a column to sort)</h2>" + _table(rows), "<h2>Targets</h2>" + gallery]
        if photos:
            sections.append("<h2>Photos</h2>" + photos)
    others = sorted(p.name for p in out.glob("*.png") if p.name not in shown and not p.name.startswith("."))
    if others:
        sections.append(
            "<h2>Other images</h2>"
            + "\n".join(f"<figure>{_img(out, n)}<figcaption>{html.escape(n)}</figcaption></figure>" for n in others)
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>latent-fit {kind}: {html.escape(out.resolve().name)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{chr(10).join(sections)}\n<script>{_SORT}</script></body></html>\n"
    )


def write_report(out: Path, kind: str, note: str = "") -> Path:
    """Write OUT/index.html (atomically) for a `kind` run (project, edit or sweep): every target
    with its projection and comparison, the metrics in a table that sorts by column, and for a
    sweep its plot and grid; `note` (e.g. the suggested w_r) is shown on top. Returns its path."""
    path = Path(out) / "index.html"
    text = render_report(out, kind, note)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))
    return path
