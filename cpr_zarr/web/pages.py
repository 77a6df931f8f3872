"""The HTML of ``cpr-zarr serve``: plain server-rendered pages, one inline style sheet, no
script or style from anywhere else (the page works offline)."""

from __future__ import annotations

import json
import math
import urllib.parse
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cpr_zarr.web.catalog import Filter, ResultSummary

__all__ = ["index_page", "message_page", "result_page", "table_html"]

PAGE_SIZE = 60

STYLE = """
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f4f5f7; }
header { background: #1d2b3a; color: #fff; padding: 10px 20px; display: flex; gap: 16px;
  align-items: baseline; }
header a { color: #fff; text-decoration: none; font-weight: 600; font-size: 17px; }
header .store { opacity: .75; font-family: monospace; }
main { padding: 16px 20px; }
form.filters { display: flex; flex-wrap: wrap; gap: 8px; align-items: end; margin-bottom: 14px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: #555; }
form.filters input, form.filters select, button, .button { font: inherit; padding: 5px 8px;
  border: 1px solid #b8c0c8; border-radius: 4px; background: #fff; }
button, .button { background: #2a6fdb; color: #fff; border-color: #2a6fdb; cursor: pointer;
  text-decoration: none; display: inline-block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; }
.card { background: #fff; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.15);
  overflow: hidden; color: inherit; text-decoration: none; display: flex; flex-direction: column; }
.card:hover { box-shadow: 0 2px 8px rgba(0,0,0,.3); }
.card .thumb { width: 100%; aspect-ratio: 1; object-fit: contain; background: #000;
  image-rendering: pixelated; display: block; }
.card .preview { aspect-ratio: 1; overflow: hidden; background: #fafafa; font-size: 11px; }
.card .body { padding: 6px 8px 8px; }
.name { font-weight: 600; word-break: break-all; }
.meta { color: #5b6570; font-size: 12px; }
.kind { display: inline-block; padding: 0 5px; border-radius: 3px; font-size: 11px;
  background: #e3e8ee; color: #333; }
.kind.labels { background: #fde6c8; } .kind.table { background: #d8f0dc; }
table { border-collapse: collapse; }
td, th { border: 1px solid #dde2e7; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
.pager { margin: 16px 0; display: flex; gap: 12px; align-items: center; }
.result { display: grid; grid-template-columns: minmax(200px, 360px) 1fr; gap: 20px; }
.result img.big { width: 100%; image-rendering: pixelated; background: #000; border-radius: 6px; }
section { background: #fff; border-radius: 6px; padding: 10px 14px; margin-bottom: 14px;
  box-shadow: 0 1px 3px rgba(0,0,0,.1); }
h2 { font-size: 15px; margin: 0 0 8px; }
code, pre { font-family: ui-monospace, monospace; font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-all; margin: 0; }
.notice { background: #fff6d6; padding: 6px 10px; border-radius: 4px; margin-bottom: 10px; }
"""


def _layout(title: str, store_url: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(title)}</title>{meta}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>"
        f'<header><a href="/">cpr_zarr</a><span class="store">{escape(store_url)}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def _url(path: str, **query: Any) -> str:
    pairs = [(k, v) for k, v in query.items() if v not in (None, "")]
    return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")


def _link(s: ResultSummary) -> str:
    return (
        f'<a href="/result/{escape(s.group_path)}">{escape(s.name)}</a> '
        f'<code>{s.content_hash[:12]}</code> <span class="kind {s.kind}">{s.kind}</span>'
    )


def table_html(preview: dict[str, Any]) -> str:
    """A ``{"columns": [...], "rows": [[...]], "total": n}`` preview as an HTML table."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in preview["columns"])
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
        for row in preview["rows"]
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _card(s: ResultSummary, previews: dict[str, dict[str, Any]]) -> str:
    if s.kind == "table":
        preview = previews.get(s.group_path)
        picture = (
            f'<div class="preview">{table_html(preview)}</div>'
            if preview
            else '<div class="preview"></div>'
        )
    else:
        picture = f'<img class="thumb" src="/thumb/{escape(s.group_path)}" loading="lazy" alt="">'
    shape = "&times;".join(str(n) for n in s.shape)
    produced = (s.created or "")[:16].replace("T", " ")
    task = ", ".join(s.tasks) or "direct save"
    flow = f" · {escape(', '.join(s.flows))}" if s.flows else ""
    return (
        f'<a class="card" href="/result/{escape(s.group_path)}" data-kind="{s.kind}" '
        f'data-name="{escape(s.name)}">{picture}<div class="body">'
        f'<div class="name">{escape(s.name)}</div>'
        f'<div class="meta"><span class="kind {s.kind}">{s.kind}</span> '
        f"<code>{s.content_hash[:12]}</code></div>"
        f'<div class="meta">{shape} {escape(s.dtype)}</div>'
        f'<div class="meta">{escape(produced)} · {escape(task)}{flow}</div>'
        "</div></a>"
    )


def _select(name: str, label: str, options: list[str], chosen: str) -> str:
    opts = '<option value="">any</option>' + "".join(
        f"<option{' selected' if o == chosen else ''}>{escape(o)}</option>" for o in options
    )
    return f'<label>{label}<select name="{name}">{opts}</select></label>'


def index_page(
    store_url: str,
    items: list[ResultSummary],
    total: int,
    flt: Filter,
    page: int,
    choices: dict[str, list[str]],
    previews: dict[str, dict[str, Any]],
    *,
    indexing: bool,
) -> str:
    """The grid of result cards (one page of them) with the filter form and a pager."""
    pages = max(1, math.ceil(len(items) / PAGE_SIZE))
    page = min(max(page, 1), pages)
    shown = items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    query = {
        "q": flt.text, "task": flt.task, "flow": flt.flow, "kind": flt.kind,
        "since": flt.since.isoformat() if flt.since else "",
        "until": flt.until.isoformat() if flt.until else "",
    }  # fmt: skip
    form = (
        '<form class="filters" method="get" action="/">'
        f'<label>name or hash<input name="q" value="{escape(flt.text)}" placeholder="e.g. label"></label>'
        + _select("task", "task", choices["task"], flt.task)
        + _select("flow", "flow or flow run", choices["flow"], flt.flow)
        + _select("kind", "kind", ["image", "labels", "table"], flt.kind)
        + f'<label>since<input type="date" name="since" value="{escape(query["since"])}"></label>'
        + f'<label>until<input type="date" name="until" value="{escape(query["until"])}"></label>'
        + '<button type="submit">Filter</button> <a href="/">clear</a></form>'
    )
    notice = (
        '<div class="notice">Still reading the store; this page reloads by itself.</div>'
        if indexing
        else ""
    )
    first = (page - 1) * PAGE_SIZE + 1 if shown else 0
    count = (
        f'<span class="count">{first}&ndash;{first + len(shown) - 1 if shown else 0} of '
        f"{len(items)} results"
        + (f" ({total} in the store)" if len(items) != total else "")
        + "</span>"
    )
    prev_link = (
        f'<a href="{escape(_url("/", **query, page=page - 1))}">&lsaquo; previous</a>'
        if page > 1
        else ""
    )
    next_link = (
        f'<a href="{escape(_url("/", **query, page=page + 1))}">next &rsaquo;</a>'
        if page < pages
        else ""
    )
    pager = f'<div class="pager">{prev_link}{count} · page {page} of {pages}{next_link}</div>'
    cards = "".join(_card(s, previews) for s in shown)
    body = f'{notice}{form}{pager}<div class="grid">{cards}</div>{pager if len(shown) > 12 else ""}'
    return _layout("cpr_zarr results", store_url, body, refresh=3 if indexing else None)


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def result_page(
    store_url: str,
    s: ResultSummary,
    *,
    ome: dict[str, Any] | None,
    records: list[dict[str, Any]],
    lineage: dict[str, list[ResultSummary]],
    labels: list[ResultSummary],
    parent: ResultSummary | None,
    preview: dict[str, Any] | None,
    by_hash: dict[str, ResultSummary],
) -> str:
    """One result: picture, metadata, NGFF summary, provenance, lineage, labels, open-in-view."""
    rows = [
        ("group path", f"<code>{escape(s.group_path)}</code>"),
        ("content hash", f"<code>{s.content_hash}</code>"),
        ("kind", f'<span class="kind {s.kind}">{s.kind}</span>'),
        ("shape", " &times; ".join(str(n) for n in s.shape)),
        ("dtype", escape(s.dtype)),
        ("created", escape(s.created or "-")),
        ("last produced", escape(s.last_produced or "-")),
    ]
    if ome and ome.get("multiscales"):
        ms = ome["multiscales"][0]
        axes = ", ".join(
            f"{escape(a['name'])} ({escape(a.get('unit', a.get('type', '')))})" for a in ms["axes"]
        )
        rows.append(("axes", axes))
        for d in ms["datasets"]:
            scale: list[float] = next(
                (t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale"), []
            )
            rows.append((f"level {escape(d['path'])} scale", escape(str(scale))))
    if parent is not None:
        rows.append(("label image of", _link(parent)))
    if labels:
        rows.append(("label images", "<br>".join(_link(x) for x in labels)))
    rows.append(("read with", f"<code>cpr_zarr.ResultStore({escape(repr(store_url))})"
                 f".open({escape(repr(s.group_path))})</code>"))  # fmt: skip
    if s.kind == "table":
        picture = table_html(preview) if preview else ""
        open_button = ""
    else:
        picture = f'<img class="big" src="/thumb/{escape(s.group_path)}" alt="thumbnail">'
        open_button = (
            f'<p><a class="button" id="open-neuroglancer" '
            f'href="{escape(_url("/view", ref=s.group_path))}">Open in neuroglancer</a></p>'
        )

    def record_html(r: dict[str, Any]) -> str:
        inputs = []
        for h in r.get("inputs", []) or []:
            known = by_hash.get(h)
            inputs.append(_link(known) if known else f"<code>{escape(h)}</code> (not in the store)")
        fields = [
            ("created", escape(str(r.get("created", "")))),
            ("task", escape(f"{r.get('task_name') or 'direct save'}"
                            + (f" (run {r['task_run_name']})" if r.get("task_run_name") else ""))),
            ("flow", escape(f"{r.get('flow_name') or '-'}"
                            + (f" (run {r['flow_run_name']})" if r.get("flow_run_name") else ""))),
            ("function", escape(str(r.get("function") or "-"))
             + (f" · source hash <code>{escape(str(r['source_hash'])[:12])}</code>"
                if r.get("source_hash") else "")),
            ("host", escape(str(r.get("host", "-")))),
            ("inputs", "<br>".join(inputs) or "-"),
            ("parameters", f"<pre>{escape(json.dumps(r.get('parameters', {}), indent=1, default=str)[:4000])}</pre>"),
        ]  # fmt: skip
        return _kv(fields)

    provenance = "".join(record_html(r) for r in records) or "<p>No provenance record.</p>"
    lineage_html = "".join(
        f'<h2>{title} ({len(lineage[key])})</h2><ul class="{key}">'
        + ("".join(f"<li>{_link(x)}</li>" for x in lineage[key]) or "<li>none</li>")
        + "</ul>"
        for key, title in (("inputs", "Upstream"), ("outputs", "Downstream"))
    )
    body = (
        f'<div class="result"><div>{picture}{open_button}</div><div>'
        f'<section id="metadata"><h2>{escape(s.name)}</h2>{_kv(rows)}</section>'
        f'<section id="provenance"><h2>Provenance ({len(records)} record'
        f"{'s' * (len(records) != 1)})</h2>{provenance}</section>"
        f'<section id="lineage">{lineage_html}</section>'
        "</div></div>"
    )
    return _layout(f"{s.name} · cpr_zarr", store_url, body)


def message_page(store_url: str, title: str, text: str) -> str:
    return _layout(
        title, store_url, f"<section><h2>{escape(title)}</h2><p>{escape(text)}</p></section>"
    )
