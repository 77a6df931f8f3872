"""An in-memory index of a store for the web page: one small summary per result.

Built once in the background (a scan of the store, then the provenance records of each
result, several at a time) and refreshed incrementally: a result is content-addressed and
never changes, so only group paths not seen before are read again. Lineage edges come from
the same summaries, so a result page never rescans the store.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING

from cpr_zarr.errors import CprZarrError
from cpr_zarr.web.thumbnail import parent_image_path

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["Catalog", "Filter", "ResultSummary", "summarize"]

logger = logging.getLogger("cpr_zarr")


@dataclass(frozen=True, slots=True)
class ResultSummary:
    """What a card and the filters need about one result."""

    group_path: str
    name: str
    content_hash: str
    kind: str  # "image", "labels" or "table"
    shape: tuple[int, ...]
    dtype: str
    created: str | None  # ISO time of the first provenance record
    last_produced: str | None
    tasks: tuple[str, ...]
    flows: tuple[str, ...]  # flow names and flow run names
    inputs: tuple[str, ...]  # content hashes of the inputs, over all records
    records: int

    @property
    def parent(self) -> str | None:
        return parent_image_path(self.group_path)

    @property
    def created_date(self) -> date | None:
        return datetime.fromisoformat(self.created).date() if self.created else None


def summarize(store: ResultStore, target: ZarrTarget) -> ResultSummary:
    from cpr_zarr.core.provenance import read_records

    # the target comes from a scan that just checked its commit: no second open
    records = read_records(store.storage, target.group_path)
    kind = (
        "table"
        if target.dtype == "table"
        else "labels"
        if parent_image_path(target.group_path) is not None
        else "image"
    )

    def values(*keys: str) -> tuple[str, ...]:
        return tuple(sorted({str(r[k]) for r in records for k in keys if r.get(k)}))

    return ResultSummary(
        group_path=target.group_path,
        name=target.name,
        content_hash=target.content_hash,
        kind=kind,
        shape=tuple(target.shape),
        dtype=target.dtype,
        created=records[0]["created"] if records else None,
        last_produced=records[-1]["created"] if records else None,
        tasks=values("task_name"),
        flows=values("flow_name", "flow_run_name"),
        inputs=tuple(sorted({h for r in records for h in r.get("inputs", []) or []})),
        records=len(records),
    )


@dataclass(frozen=True, slots=True)
class Filter:
    """The index page's filters; empty fields match everything."""

    text: str = ""  # in the name or a hash prefix
    task: str = ""
    flow: str = ""  # a flow name or a flow run name
    kind: str = ""
    since: date | None = None
    until: date | None = None

    def matches(self, s: ResultSummary) -> bool:
        text = self.text.strip().lower()
        if text and text not in s.name.lower() and not s.content_hash.startswith(text):
            return False
        if self.task and self.task not in s.tasks:
            return False
        if self.flow and self.flow not in s.flows:
            return False
        if self.kind and self.kind != s.kind:
            return False
        day = s.created_date
        if self.since and (day is None or day < self.since):
            return False
        return not (self.until and (day is None or day > self.until))


@dataclass
class Catalog:
    """Summaries of every committed result of a store, newest first."""

    store: ResultStore
    threads: int = 8
    _by_path: dict[str, ResultSummary] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _refreshing: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Event = field(default_factory=threading.Event)
    refreshed_at: float = 0.0
    scanned: int = 0

    def refresh(self) -> None:
        """Rescan the store; read provenance only of results not seen before."""
        with self._refreshing:
            targets = {t.group_path: t for t in self.store.targets()}
            with self._lock:
                known = dict(self._by_path)
            new = [t for path, t in targets.items() if path not in known]
            self.scanned = len(targets) - len(new)

            def one(target: ZarrTarget) -> ResultSummary | None:
                try:
                    return summarize(self.store, target)
                except (CprZarrError, OSError) as exc:  # deleted meanwhile, or damaged
                    logger.warning("Not listing %s: %s", target.group_path, exc)
                    return None

            fresh: dict[str, ResultSummary] = {}
            with ThreadPoolExecutor(self.threads) as pool:
                for summary in pool.map(one, new):
                    self.scanned += 1
                    if summary is not None:
                        fresh[summary.group_path] = summary
            with self._lock:
                self._by_path = {p: s for p, s in {**known, **fresh}.items() if p in targets}
            self.refreshed_at = time.monotonic()
            self.ready.set()

    def refresh_in_background(self, min_age: float = 0.0) -> None:
        """Start a refresh unless one runs, or the last one is younger than ``min_age`` s."""
        if self.ready.is_set() and time.monotonic() - self.refreshed_at < min_age:
            return
        if self._refreshing.locked():
            return
        threading.Thread(target=self._refresh_logged, daemon=True).start()

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception:
            logger.exception("Listing store %s failed", self.store.url)
            self.ready.set()

    def all(self) -> list[ResultSummary]:
        with self._lock:
            items = list(self._by_path.values())
        return sorted(items, key=lambda s: (s.created or "", s.group_path), reverse=True)

    def get(self, group_path: str) -> ResultSummary | None:
        with self._lock:
            return self._by_path.get(group_path)

    def search(self, flt: Filter) -> list[ResultSummary]:
        return [s for s in self.all() if flt.matches(s)]

    def choices(self) -> dict[str, list[str]]:
        """Values for the filter menus: task names and flow (run) names."""
        items = self.all()
        return {
            "task": sorted({t for s in items for t in s.tasks}),
            "flow": sorted({f for s in items for f in s.flows}),
        }

    def labels_of(self, image_path: str) -> list[ResultSummary]:
        return [s for s in self.all() if s.parent == image_path]

    def lineage(self, group_path: str) -> dict[str, list[ResultSummary]]:
        """Upstream (``inputs``) and downstream (``outputs``) results, nearest first."""
        items = self.all()
        by_hash = {s.content_hash: s for s in items}
        start = self.get(group_path)
        if start is None:
            return {"inputs": [], "outputs": []}
        parents = {s.content_hash: [h for h in s.inputs if h in by_hash] for s in items}
        children: dict[str, list[str]] = {h: [] for h in by_hash}
        for h, ps in parents.items():
            for p in ps:
                children[p].append(h)

        def walk(edges: dict[str, list[str]]) -> list[ResultSummary]:
            seen: list[str] = []
            frontier = sorted(edges.get(start.content_hash, ()))
            while frontier:
                nxt: list[str] = []
                for h in frontier:
                    if h not in seen and h != start.content_hash:
                        seen.append(h)
                        nxt.extend(sorted(edges.get(h, ())))
                frontier = nxt
            return [by_hash[h] for h in seen]

        return {"inputs": walk(parents), "outputs": walk(children)}
