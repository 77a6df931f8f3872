"""The web server of ``cpr-zarr serve`` and ``cpr-zarr view``: one port for everything.

neuroglancer's Python package runs a tornado server (its web client, viewer states); we add
our routes to that server's application, so the page, the thumbnails, the store's objects
and the viewer all come from one address and one SSH forward is enough:

    /                       the result cards (``serve``), or the view of the given results
    /result/<group path>    one result: metadata, provenance, lineage, labels
    /thumb/<group path>     its thumbnail (PNG, cached on disk, generated on first request)
    /store/<key>            the store's objects, read-only, with CORS (neuroglancer's data)
    /view?ref=...&ref=...   a neuroglancer viewer of these results (a redirect to /v/<token>/)

Reads that may take time (thumbnails, tables, store objects) run in a thread pool, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from cpr_zarr.errors import CprZarrError
from cpr_zarr.web import pages
from cpr_zarr.web.catalog import Catalog, Filter
from cpr_zarr.web.thumbnail import ThumbnailCache, default_cache_dir
from cpr_zarr.web.view import Viewers, group_attrs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from cpr_zarr.store import ResultStore

__all__ = ["WebServer", "missing_extra", "start_server", "view_url"]

logger = logging.getLogger("cpr_zarr")

TABLE_PREVIEW_ROWS = 8
TABLE_PREVIEW_COLUMNS = 8


def missing_extra() -> str | None:
    """Why the web commands cannot run here (a missing package), or None."""
    import importlib.util

    for module in ("neuroglancer", "tornado"):
        if importlib.util.find_spec(module) is None:
            return (
                f"{module} is not installed. The web commands need the 'web' extra: "
                "pip install 'cpr_zarr[web]'"
            )
    return None


def _safe_key(key: str) -> str | None:
    """A store key without ``..``, empty or absolute segments, else None."""
    parts = key.split("/")
    if not key or "\\" in key or any(p in ("", ".", "..") for p in parts):
        return None
    return key


@dataclass
class WebServer:
    """What the handlers share: the store, its catalog, caches and the viewers."""

    store: ResultStore
    catalog: Catalog
    thumbnails: ThumbnailCache
    viewers: Viewers
    cache_dir: Path
    url: str
    default_refs: tuple[str, ...] = ()
    pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def read_object(self, key: str) -> bytes:
        """One object of the store (``FileNotFoundError`` if absent), through the store's
        own storage backend (so ``zarrstore://`` and obstore URLs serve too)."""
        data = self.store.storage.get(key)
        if data is None:
            raise FileNotFoundError(f"No object {key!r} in result store {self.store.url!r}")
        return data

    def table_preview(self, group_path: str) -> dict[str, Any]:
        """The first rows of a table result, cached on disk by content hash."""
        target = self.store.open(group_path)
        digest = hashlib.sha256(f"1\n{target.content_hash}".encode()).hexdigest()[:32]
        path = self.cache_dir / "tables" / digest[:2] / f"{digest}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            pass
        import pandas as pd

        from cpr_zarr import read_table

        frame = read_table(target)
        head = frame.iloc[:TABLE_PREVIEW_ROWS]
        if head.index.name is not None or not isinstance(head.index, pd.RangeIndex):
            head = head.reset_index()  # a meaningful index (e.g. label ids) is a column
        head = head.iloc[:, :TABLE_PREVIEW_COLUMNS]
        preview = {
            "columns": [str(c) for c in head.columns],
            "rows": [[_cell(v) for v in row] for row in head.itertuples(index=False)],
            "total": len(frame),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(preview, f)
        os.replace(tmp, path)
        return preview

    def ome(self, group_path: str) -> dict[str, Any] | None:
        ome = group_attrs(self.store, group_path).get("ome")
        return ome if isinstance(ome, dict) else None


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def view_url(refs: tuple[str, ...] | list[str]) -> str:
    """The path that opens these results in neuroglancer."""
    import urllib.parse

    return "/view?" + urllib.parse.urlencode([("ref", r) for r in refs])


def _handlers(web: WebServer) -> list[Any]:
    import tornado.web

    class Base(tornado.web.RequestHandler):
        def origin(self) -> str:
            return f"{self.request.protocol}://{self.request.host}"

        def fail(self, status: int, text: str) -> None:
            self.set_status(status)
            self.finish(pages.message_page(web.store.url, f"{status}", text))

    class Index(Base):
        async def get(self) -> None:
            if web.default_refs and not self.request.query:
                self.redirect(view_url(web.default_refs))
                return
            web.catalog.refresh_in_background(min_age=30.0)
            flt = Filter(
                text=self.get_query_argument("q", ""),
                task=self.get_query_argument("task", ""),
                flow=self.get_query_argument("flow", ""),
                kind=self.get_query_argument("kind", ""),
                since=_date(self.get_query_argument("since", "")),
                until=_date(self.get_query_argument("until", "")),
            )
            try:
                page = int(self.get_query_argument("page", "1"))
            except ValueError:
                page = 1
            items = web.catalog.search(flt)
            page = min(max(page, 1), max(1, -(-len(items) // pages.PAGE_SIZE)))
            start = (page - 1) * pages.PAGE_SIZE
            tables = [
                s.group_path for s in items[start : start + pages.PAGE_SIZE] if s.kind == "table"
            ]

            def load_previews() -> dict[str, dict[str, Any]]:
                out = {}
                for path in tables:
                    try:
                        out[path] = web.table_preview(path)
                    except (CprZarrError, OSError) as exc:
                        logger.warning("No preview of %s: %s", path, exc)
                return out

            previews = await web.run(load_previews)
            self.finish(
                pages.index_page(
                    web.store.url, items, len(web.catalog.all()), flt, page,
                    web.catalog.choices(), previews, indexing=not web.catalog.ready.is_set(),
                )
            )  # fmt: skip

    class Result(Base):
        async def get(self, group_path: str) -> None:
            summary = web.catalog.get(group_path)
            if summary is None and time.monotonic() - web.catalog.refreshed_at > 5.0:
                await web.run(web.catalog.refresh)  # saved since the last listing?
                summary = web.catalog.get(group_path)
            if summary is None:
                self.fail(404, f"No result {group_path!r} in this store.")
                return
            records = await web.run(web.store.provenance, group_path)
            ome = await web.run(web.ome, group_path)
            preview = None
            if summary.kind == "table":
                preview = await web.run(web.table_preview, group_path)
            by_hash = {s.content_hash: s for s in web.catalog.all()}
            parent = web.catalog.get(summary.parent) if summary.parent else None
            self.finish(
                pages.result_page(
                    web.store.url, summary, ome=ome, records=records,
                    lineage=web.catalog.lineage(group_path),
                    labels=web.catalog.labels_of(group_path), parent=parent,
                    preview=preview, by_hash=by_hash,
                )
            )  # fmt: skip

    class Thumb(Base):
        async def get(self, group_path: str) -> None:
            try:
                target = await web.run(web.store.open, group_path)
                if target.dtype == "table":
                    raise tornado.web.HTTPError(404)
                png = await web.run(web.thumbnails.get, web.store, target)
            except CprZarrError as exc:
                self.fail(404, str(exc))
                return
            self.set_header("Content-Type", "image/png")
            # a result never changes: its thumbnail can be kept by the browser
            self.set_header("Cache-Control", "public, max-age=31536000, immutable")
            self.finish(png)

    class StoreObject(Base):
        def set_default_headers(self) -> None:
            self.set_header("Access-Control-Allow-Origin", "*")
            self.set_header("Access-Control-Allow-Headers", "range")
            self.set_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")

        def options(self, key: str) -> None:
            self.set_status(204)
            self.finish()

        async def get(self, key: str) -> None:
            safe = _safe_key(key)
            if safe is None:
                self.set_status(404)
                self.finish()
                return
            try:
                data = await web.run(web.read_object, safe)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                self.set_status(404)
                self.finish()
                return
            self.set_header(
                "Content-Type",
                "application/json" if safe.endswith(".json") else "application/octet-stream",
            )
            self.finish(data)

    class View(Base):
        async def get(self) -> None:
            refs = self.get_query_arguments("ref")
            if not refs:
                self.fail(400, "Give the results to show: /view?ref=<group path or hash>.")
                return
            try:
                path = await web.run(web.viewers.viewer_path, self.origin(), refs)
            except (CprZarrError, ValueError) as exc:
                self.fail(404, str(exc))
                return
            self.redirect(path)

    return [
        (r"/", Index),
        (r"/result/(.+)", Result),
        (r"/thumb/(.+)", Thumb),
        (r"/store/(.*)", StoreObject),
        (r"/view", View),
    ]


def start_server(
    store: ResultStore,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    cache_dir: Path | None = None,
    default_refs: tuple[str, ...] = (),
    index: bool = True,
) -> WebServer:
    """Start neuroglancer's server with our routes in a background thread; return at once.

    Raises
    ------
    OSError
        If the address cannot be bound (the port is taken).
    """
    import neuroglancer
    import neuroglancer.server

    neuroglancer.set_server_bind_address(host, port)
    neuroglancer.server.start()
    server = neuroglancer.server.global_server
    actual_port = server.port
    shown = "localhost" if host in ("127.0.0.1", "localhost", "::1") else host
    if host in ("0.0.0.0", "::"):
        import socket

        shown = socket.getfqdn()
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    web = WebServer(
        store=store,
        catalog=Catalog(store),
        thumbnails=ThumbnailCache(folder),
        viewers=Viewers(store),
        cache_dir=folder,
        url=f"http://{shown}:{actual_port}/",
        default_refs=default_refs,
        pool=ThreadPoolExecutor(max(4, (os.cpu_count() or 1) * 2)),
    )
    # our routes go before neuroglancer's (tornado tries rule groups added later first, and
    # falls through to neuroglancer's for paths we do not handle)
    server.app.add_handlers(r".*", _handlers(web))
    if index:
        web.catalog.refresh_in_background()
    return web
