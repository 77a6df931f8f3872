"""Prefect UI artifacts of ``cpr_zarr.task`` results: tables, previews, save progress.

When a ``cpr_zarr.task`` run completes (computed or a cache hit), its ``on_completion`` hook
:func:`cpr_zarr_artifacts` creates, through the Prefect API:

* a table artifact of the task run's results (name, hash prefix, kind, shape, dtype, stored
  size, compression ratio, physical size, cache hit, store URL), shown on the task run page;
* a markdown artifact with a preview per array result (:mod:`cpr_zarr.core.preview`: a
  projection of the smallest pyramid level, labels coloured) as a data-URI PNG;
* the flow run's table of every result its tasks produced, keyed
  ``cpr-zarr-results-<flow run id>`` (so it is listed on the Artifacts page too).

Long saves inside a task also update a progress artifact (:func:`progress_artifacts`).

Turn all of it off with ``CPR_ZARR_ARTIFACTS=0`` in the environment of the task runs, or
per task with ``cpr_zarr.task(artifacts=False)``.

Why the flow table is built this way
------------------------------------
Tasks finish concurrently, in threads, in Dask worker processes, on other machines: the
flow table cannot be appended to (an artifact's data is replaced whole), and a
read-modify-write of it loses rows when two tasks interleave. The per-task tables are the
rows' append-only source of truth: each is written once by its own task run. After writing
its own, a task (re)builds the flow table from all per-task tables of the flow run and then
reads both again, repeating until the flow table holds every row it saw. The last writer of
the flow table verified, after its write, that it holds every row present then; any task
whose rows came later writes the flow table again after them. So once all tasks are done,
the flow table holds every row, whatever the interleaving. Two tasks may both create the
flow table when none exists yet: every pass keeps the oldest one and deletes the others.
A pass is one listing of the flow run's tables; a task makes two passes, or three if it
updated the table.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.target import ZarrTarget

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    from cpr_zarr.core.progress import ProgressSink
    from cpr_zarr.model.ngff import ImageMeta

__all__ = [
    "ARTIFACTS_ENV",
    "FLOW_TABLE_PREFIX",
    "artifacts_enabled",
    "cpr_zarr_artifacts",
    "flow_table_key",
    "progress_artifacts",
    "result_row",
]

logger = logging.getLogger("cpr_zarr")

ARTIFACTS_ENV = "CPR_ZARR_ARTIFACTS"
FLOW_TABLE_PREFIX = "cpr-zarr-results-"
_MARK = "cpr_zarr"  # metadata_ key marking artifacts made here
_TASK_TABLE = "task-results"
_FLOW_TABLE = "flow-results"
_PAGE = 200
# a table cell without a value: an em dash ("-" alone is a list item in the V1 UI's markdown)
_MISSING = "—"
_PASSES = 20
# the wait between two flow-table passes of one process: this many times the last pass
_PASS_WAIT_FACTOR = 4.0
_PASS_WAIT_MAX = 2.0  # seconds
_UNITS = {
    "micrometer": "µm",
    "nanometer": "nm",
    "millimeter": "mm",
    "centimeter": "cm",
    "meter": "m",
    "angstrom": "Å",
    "second": "s",
    "millisecond": "ms",
    "microsecond": "µs",
    "minute": "min",
    "hour": "h",
}


def artifacts_enabled(task: Any = None) -> bool:
    """Whether to create artifacts: not for ``cpr_zarr.task(artifacts=False)``, nor when
    ``$CPR_ZARR_ARTIFACTS`` is ``0``/``false``/``no``/``off``."""
    if task is not None and getattr(task, "artifacts", True) is False:
        return False
    return os.environ.get(ARTIFACTS_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def flow_table_key(flow_run_id: UUID | str) -> str:
    """The key of a flow run's results table (lowercase letters, digits and dashes)."""
    return f"{FLOW_TABLE_PREFIX}{flow_run_id}"


# -- rows -------------------------------------------------------------------------------


def _targets(value: Any) -> list[ZarrTarget]:
    if isinstance(value, ZarrTarget):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _targets(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _targets(v)]
    return []


def _bytes(n: float | None) -> str:
    if n is None or n != n:
        return _MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return _MISSING  # pragma: no cover


def _kind(target: ZarrTarget, image: ImageMeta | None) -> str:
    from cpr_zarr.core.preview import is_label_image

    if target.dtype == "table":
        return "table"
    if is_label_image(target):
        return "labels"
    return "image" if image is not None else "array"


def physical_size(target: ZarrTarget, image: ImageMeta | None) -> str:
    """Extent of each axis with a unit, e.g. ``z 30 µm, y 64 µm, x 64 µm`` ("—" if none)."""
    if image is None:
        return _MISSING
    parts = []
    for axis, unit, scale, size in zip(
        image.axes, image.units, image.scale, target.shape, strict=False
    ):
        if unit is None:
            continue
        parts.append(f"{axis} {size * float(scale):.4g} {_UNITS.get(unit, unit)}")
    return ", ".join(parts) if parts else _MISSING


def result_row(target: ZarrTarget, *, cache_hit: bool, task_run: str = "") -> dict[str, str]:
    """One row of a results table (strings, as the Prefect UI shows them)."""
    from cpr_zarr.core.inventory import stored_bytes

    store = target.store
    # the image metadata of the checked commit record (tables have none)
    image = store.reader(target).record.image if target.dtype != "table" else None
    kind = _kind(target, image)
    stored = stored_bytes(store.storage, target.group_path)
    raw = None
    if kind != "table":
        raw = int(np.prod(target.shape, dtype=np.int64)) * np.dtype(target.dtype).itemsize
    ratio = f"{raw / stored:.2f}" if raw is not None and stored else _MISSING
    return {
        "result": target.name,
        "task run": task_run,
        "hash": target.content_hash[:12],
        "kind": kind,
        "shape": "x".join(str(s) for s in target.shape),
        "dtype": target.dtype,
        "stored": _bytes(stored),
        "ratio": ratio,
        "physical size": physical_size(target, image) if kind != "table" else _MISSING,
        "cache hit": "yes" if cache_hit else "no",
        "store": target.store_url,
        "group": target.group_path,
    }


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    return (str(row.get("task run")), str(row.get("group")))


# -- previews ---------------------------------------------------------------------------


def preview_markdown(target: ZarrTarget, row: dict[str, str]) -> str | None:
    """A markdown block with a data-URI PNG preview of an array result (None: no picture)."""
    from cpr_zarr.core.preview import preview_png
    from cpr_zarr.core.pyramid import level_count

    png = preview_png(target)
    if png is None:
        return None
    level = level_count(target) - 1
    source = "base level" if level == 0 else f"level {level} (smallest)"
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        f"### {row['result']} `{row['hash']}`\n\n"
        f"{row['kind']}, {row['shape']} {row['dtype']}, {row['physical size']}; "
        f"maximum projection of the {source}"
        f"{', labels coloured' if row['kind'] == 'labels' else ''}"
        f"{'; cache hit' if row['cache hit'] == 'yes' else ''}.\n\n"
        f"![{row['result']}]({uri})\n\n"
        f"`{row['store']}` · `{row['group']}`\n"
    )


# -- the hook -----------------------------------------------------------------------------


def cpr_zarr_artifacts(task: Any, task_run: Any, state: Any) -> None:
    """``on_completion`` hook of every ``cpr_zarr.task``: the artifacts of the module doc.

    Never fails the task: a problem is logged as a warning (the results are stored anyway).
    """
    if not artifacts_enabled(task):
        return
    try:
        value = state.result(raise_on_failure=False, _sync=True)
        targets = _targets(value)
        if not targets:
            return
        record_results(
            targets,
            cache_hit=state.name == "Cached",
            task_run_id=task_run.id,
            task_run_name=task_run.name,
            flow_run_id=task_run.flow_run_id,
        )
    except Exception as exc:
        logger.warning(
            "cpr_zarr could not create the Prefect artifacts of task run %s: %s: %s "
            "(the results are stored; set %s=0 to skip artifacts).",
            getattr(task_run, "name", "?"),
            type(exc).__name__,
            exc,
            ARTIFACTS_ENV,
        )


def record_results(
    targets: list[ZarrTarget],
    *,
    cache_hit: bool,
    task_run_id: UUID | None,
    task_run_name: str,
    flow_run_id: UUID | None,
) -> None:
    """Create the task run's table and previews, then update its flow run's table."""
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    rows = []
    seen = set()
    for target in targets:
        if target.group_path in seen:
            continue
        seen.add(target.group_path)
        rows.append((target, result_row(target, cache_hit=cache_hit, task_run=task_run_name)))
    mark = {_MARK: _TASK_TABLE}
    with get_client(sync_client=True) as client:
        client.create_artifact(
            ArtifactCreate(
                type="table",
                description=f"cpr_zarr results of task run `{task_run_name}`",
                data=json.dumps([row for _, row in rows]),
                metadata_=mark,
                task_run_id=task_run_id,
                flow_run_id=flow_run_id,
            )
        )
        blocks = [
            block
            for target, row in rows
            if row["kind"] != "table" and (block := preview_markdown(target, row)) is not None
        ]
        if blocks:  # one artifact for all previews of the run: one request
            client.create_artifact(
                ArtifactCreate(
                    type="markdown",
                    description=f"cpr_zarr previews of task run `{task_run_name}`",
                    data="\n".join(blocks),
                    metadata_={_MARK: "previews"},
                    task_run_id=task_run_id,
                    flow_run_id=flow_run_id,
                )
            )
        if flow_run_id is not None:
            _update_flow_table_once(client, flow_run_id)


_UPDATING: dict[Any, bool] = {}  # flow run id -> another pass was asked for meanwhile
_UPDATING_LOCK = threading.Lock()


def _update_flow_table_once(client: Any, flow_run_id: UUID) -> None:
    """:func:`update_flow_table`, coalesced between the task threads of this process.

    Each pass lists every task table of the flow run, so one pass per task costs O(tasks)
    each, O(tasks²) for a flow (1,000 mapped tiny tasks spent most of their time there).
    While a thread of this process is updating a flow run's table, other threads that
    finish only ask it for one more pass and return: that pass lists the tables after
    theirs were written, so their rows are in the table before the updating task ends,
    as before. It waits a few times as long as its last pass took before it starts the
    next, gathering the rows of tasks that finish meanwhile into one pass. Other processes
    coordinate through the tables themselves (module doc).
    """
    with _UPDATING_LOCK:
        if flow_run_id in _UPDATING:
            _UPDATING[flow_run_id] = True
            return
        _UPDATING[flow_run_id] = False
    try:
        while True:
            started = time.monotonic()
            update_flow_table(client, flow_run_id)
            with _UPDATING_LOCK:
                if not _UPDATING[flow_run_id]:
                    del _UPDATING[flow_run_id]
                    return
            _pause(started)  # more rows came meanwhile: gather them for the next pass
            with _UPDATING_LOCK:
                _UPDATING[flow_run_id] = False
    except BaseException:
        with _UPDATING_LOCK:
            _UPDATING.pop(flow_run_id, None)
        raise


def _pause(started: float) -> None:
    """Wait a few times as long as the pass begun at ``started`` took: rows that come
    meanwhile are gathered into the next pass. Each pass lists every table of the flow run;
    back to back, the passes of a 1,000-task flow kept the Prefect server busy throughout."""
    time.sleep(min(_PASS_WAIT_MAX, _PASS_WAIT_FACTOR * (time.monotonic() - started)))


def _tables(client: Any, flow_run_id: UUID) -> tuple[list[Any], list[Any]]:
    """The flow run's (task tables, flow tables) made here, each oldest first (one listing)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    where = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        type=ArtifactFilterType(any_=["table"]),
    )
    found: dict[Any, Any] = {}
    offset = 0
    while True:  # newest first: tables created meanwhile shift pages, never hide one
        page = client.read_artifacts(
            artifact_filter=where, sort=ArtifactSort.CREATED_DESC, limit=_PAGE, offset=offset
        )
        for artifact in page:
            found.setdefault(artifact.id, artifact)
        if len(page) < _PAGE:
            break
        offset += _PAGE
    ordered = sorted(found.values(), key=lambda a: (a.created, str(a.id)))
    key = flow_table_key(flow_run_id)

    def made_here(a: Any, kind: str) -> bool:
        return (a.metadata_ or {}).get(_MARK) == kind

    return (
        [a for a in ordered if made_here(a, _TASK_TABLE)],
        [a for a in ordered if made_here(a, _FLOW_TABLE) and a.key == key],
    )


def _rows(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    if isinstance(data, str):
        data = json.loads(data)
    return [row for row in data or [] if isinstance(row, dict)]


def update_flow_table(client: Any, flow_run_id: UUID) -> None:
    """Make the flow run's results table hold every row of its task tables (module doc)."""
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
    from prefect.exceptions import ObjectNotFound

    started = None
    for _ in range(_PASSES):
        if started is not None:
            _pause(started)
        started = time.monotonic()
        task_tables, tables = _tables(client, flow_run_id)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for table in task_tables:
            for row in _rows(table):
                rows.setdefault(_row_key(row), row)
        if not tables:
            client.create_artifact(
                ArtifactCreate(
                    type="table",
                    key=flow_table_key(flow_run_id),
                    description=f"cpr_zarr results of flow run {flow_run_id}",
                    data=json.dumps(list(rows.values())),
                    metadata_={_MARK: _FLOW_TABLE},
                    flow_run_id=flow_run_id,
                )
            )
            continue  # check it: another task may have created one at the same moment
        keep, *extra = tables
        for duplicate in extra:  # created concurrently: the oldest one stays
            with contextlib.suppress(ObjectNotFound):
                client.delete_artifact(duplicate.id)
        held = {_row_key(row) for row in _rows(keep)}
        if set(rows) <= held and not extra:
            return
        client.update_artifact(keep.id, ArtifactUpdate(data=json.dumps(list(rows.values()))))
    logger.warning(
        "The results table of flow run %s may miss rows: it kept changing while updated.",
        flow_run_id,
    )


# -- progress ----------------------------------------------------------------------------


class _ProgressArtifact:
    """A Prefect progress artifact of one long save, created on its first report."""

    def __init__(self, what: str, task_run_id: UUID | None, flow_run_id: UUID | None) -> None:
        from prefect import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        self.what = what
        with get_client(sync_client=True) as client:
            self.id = client.create_artifact(
                ArtifactCreate(
                    type="progress",
                    description=f"saving {what}",
                    data=0.0,
                    metadata_={_MARK: "progress"},
                    task_run_id=task_run_id,
                    flow_run_id=flow_run_id,
                )
            ).id

    def _set(self, percent: float, message: str) -> None:
        from prefect import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(self.id, ArtifactUpdate(data=percent, description=message))

    def update(self, fraction: float, message: str) -> None:
        self._set(round(100 * fraction, 1), message)

    def close(self, ok: bool, message: str) -> None:
        if ok:
            self._set(100.0, message)
        else:
            self._set(0.0, message)


def progress_artifacts(task: Any = None) -> Callable[[str], ProgressSink | None] | None:
    """A sink factory for :func:`cpr_zarr.core.progress.reporting_to`: each long save of the
    running task run gets a progress artifact (None when artifacts are off or no run)."""
    if not artifacts_enabled(task):
        return None
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None:
        return None
    task_run_id, flow_run_id = ctx.task_run.id, ctx.task_run.flow_run_id

    def factory(what: str) -> ProgressSink | None:
        return _ProgressArtifact(what, task_run_id, flow_run_id)

    return factory
