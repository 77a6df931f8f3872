"""Verifying and repairing a whole store: records, arrays, every chunk, record copies and
label indexes (``cpr-zarr verify``); repair rebuilds a damaged commit marker from its copy
or from the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from cpr_zarr.core import catalog
from cpr_zarr.core.codec import ChunkCodec, thread_map, worker_count
from cpr_zarr.core.digests import store_digests, write_tree
from cpr_zarr.core.integrity import (
    ABSENT,
    Checker,
    Damage,
    check_array_doc,
    check_arrays,
    copy_key,
    grid_count,
    is_leftover,
    load_commit,
    parse_document,
    read_checked,
    read_copy,
    read_doc,
    remove_command,
    write_copy,
)
from cpr_zarr.core.labels import update_labels_list
from cpr_zarr.core.progress import Progress, track
from cpr_zarr.core.provenance import read_records
from cpr_zarr.core.reader import ChunkReader, forget_reader
from cpr_zarr.core.table import read_checked_table
from cpr_zarr.errors import ChunkVerificationError, IntegrityError
from cpr_zarr.model.hashing import (
    ALGORITHM,
    block_digest,
    chunk_digest,
    combine_digests,
    digest_tree,
)
from cpr_zarr.model.layout import (
    canonical_dtype,
    chunk_grid,
    digest_block_key,
    parse_group_path,
)
from cpr_zarr.model.ngff import labels_group_attrs
from cpr_zarr.model.records import ARRAY_PATH, ArrayRecord, ResultDocument, TableRecord

if TYPE_CHECKING:
    from cpr_zarr.storage import Storage

__all__ = ["VerifyReport", "repair", "verify_store"]


# -- repair -------------------------------------------------------------------------------


def repair(storage: Storage, path: str) -> str:
    """Rebuild the damaged commit marker of ``path`` if its data still verifies.

    Tries the record copy written before the commit, then (arrays only) a record rebuilt
    from the base array's metadata and chunks, accepted only if the chunks hash to the
    content hash in the path. Every chunk (levels and tables included) is verified before
    the marker is written.

    Returns
    -------
    str
        What was done.

    Raises
    ------
    IntegrityError
        If neither source gives a record that the content hash and the data vouch for.
    """
    c = Checker(storage.url, path)
    reasons: list[str] = []
    doc: dict[str, Any] | None = None
    record: ArrayRecord | TableRecord | None = None
    how = ""
    try:
        copy = read_copy(storage, path)
        if copy is ABSENT:
            raise ValueError("there is none")
        record = parse_document(storage.url, path, copy, key=copy_key(copy)).record
        if record.record_digest is None:
            raise ValueError("it has no record_digest")
        check_arrays(storage, path, record)
        doc, how = copy, "from its record copy"
    except (ValueError, IntegrityError) as exc:
        reasons.append(f"record copy unusable ({exc})")
    if doc is None:
        try:
            document = _rebuild_from_chunks(storage, path)
            doc, record = document.to_dict(), document.record
            how = "from its chunks (NGFF metadata and pyramid levels not restored)"
        except (ValueError, IntegrityError, OSError) as exc:
            reasons.append(f"cannot rebuild from chunks ({exc})")
    if doc is None or record is None:
        raise c.fail("the commit record", "cannot be repaired: " + "; ".join(reasons))
    problems = _verify_data(storage, path, record)
    if problems:
        raise c.fail("the data", "does not verify, not repaired: " + problems[0])
    storage.set_json(f"{path}/zarr.json", doc)
    write_copy(storage, path, doc)
    if "/labels/" in path:
        update_labels_list(storage, path.split("/labels/")[0])
    if "/tables/" in path:
        from cpr_zarr.core.table import update_tables_list

        update_tables_list(storage, path.split("/tables/")[0])
    forget_reader(storage, path)
    return f"rebuilt the commit record of {path!r} {how}"


def _rebuild_from_chunks(storage: Storage, path: str) -> ResultDocument:

    name, content_hash = parse_group_path(path.rsplit("/", 1)[-1])  # type: ignore[misc]
    c = Checker(storage.url, path, f"{ARRAY_PATH}/zarr.json")
    meta = read_checked(storage, c, f"{path}/{ARRAY_PATH}/zarr.json")
    shape = c.ints(meta, "shape", "shape", minimum=0, length=None)
    grid = meta.get("chunk_grid", {}) if isinstance(meta, dict) else {}
    chunks = c.ints(
        grid.get("configuration", {}), "chunk_shape", "chunk_grid", minimum=1, length=len(shape)
    )
    dtype = canonical_dtype(meta.get("data_type")).name
    check_array_doc(c, meta, dtype=dtype, shape=shape, chunks=chunks)
    codec = ChunkCodec(zarr.open_array(storage.zarr_store, path=f"{path}/{ARRAY_PATH}", mode="r"))
    digests = [
        chunk_digest(codec.read(index)) for index, _ in chunk_grid(tuple(shape), tuple(chunks))
    ]
    # the layout that wrote the result is the one whose hash the chunks give
    for layout in (2, 1):
        actual = combine_digests(
            tuple(shape), np.dtype(dtype), tuple(chunks), digests, layout=layout
        )
        if actual == content_hash:
            break
    else:
        raise ValueError(f"the chunks hash to {actual}, not {content_hash}")
    record = ArrayRecord(
        content_hash=content_hash,
        name=name,
        shape=tuple(shape),
        dtype=dtype,
        chunks=tuple(chunks),
        chunk_digests=tuple(digests),
        labels_of=path.split("/labels/")[0] if "/labels/" in path else None,
    )
    if layout == 1:
        record = replace(record, layout=1, algorithm=ALGORITHM)
    # layout 2: the digest tree is stored again (it may be what was damaged)
    return ResultDocument(record=store_digests(storage, path, record)).sealed()


def _rebuild_digest_trees(storage: Storage, path: str, record: ArrayRecord) -> str | None:
    """Rewrite the digest trees (layout 2) of ``path`` whose stored chunks still hash to the
    root the record holds: a damaged or lost digest block is rebuilt from the data it
    describes, never from anything the root does not vouch for. What was done, or None."""
    if record.layout == 1:
        return None
    rebuilt = []
    for reader in _level_readers(storage, path, record):
        root = record.digest_root
        if reader.level:
            root = record.levels[reader.level - 1].digest_root
        digests = []
        try:  # the stored values as they are, without consulting any digest
            for index, _ in chunk_grid(reader.shape, reader.chunks):
                block = reader.codec.load(index, writeable=False)
                if block is None:  # not stored: the fill value
                    block = reader.codec.fill_block(index)
                digests.append(chunk_digest(block))
        except Exception:  # a chunk zarr cannot decode: the data itself is damaged
            continue
        heights = digest_tree(b"".join(bytes.fromhex(d) for d in digests))
        if block_digest(heights[-1][0]).hex() != root:
            continue  # the chunks changed: only removing the result helps
        stored = [
            storage.get(f"{path}/{digest_block_key(reader.array_path, height, index)}")
            for height, level in enumerate(heights)
            for index in range(len(level))
        ]
        if stored != [block for level in heights for block in level]:
            write_tree(storage, path, reader.array_path, digests)
            rebuilt.append(reader.array_path)
    if not rebuilt:
        return None
    return f"rebuilt the digest blocks of {path!r} (arrays {rebuilt}) from its chunks"


# -- verifying a whole store -------------------------------------------------------------


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: counts, problems (one line each) and repairs."""

    results: int = 0
    chunks: int = 0
    tables: int = 0
    failed_chunks: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    # group paths, for the remedy to print: data that fails (only removing the result and
    # re-running its task helps), and records or label indexes that `repair` may rebuild
    damaged_data: list[str] = field(default_factory=list)
    damaged_records: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _level_readers(storage: Storage, path: str, record: ArrayRecord) -> list[ChunkReader]:
    levels = range(len(record.levels) + 1)
    return [ChunkReader(storage, path, record, level=number) for number in levels]


def _verify_data(
    storage: Storage, path: str, record: ArrayRecord | TableRecord, threads: int | None = None
) -> list[str]:
    """Re-hash every stored chunk (every level) or table array of one result."""

    if isinstance(record, TableRecord):
        try:
            read_checked_table(storage, path, record)
        except (ChunkVerificationError, IntegrityError) as exc:
            return [str(exc)]
        except Exception as exc:  # a damaged array zarr cannot decode
            return [
                f"Cannot read table {path!r} in store {storage.url!r}: {type(exc).__name__}: "
                f"{exc}. A stored array is damaged: remove the result "
                f"(`{remove_command(storage.url, path)}`) and re-run its task."
            ]
        return []
    jobs = [
        (reader, index)
        for reader in _level_readers(storage, path, record)
        for index, _ in chunk_grid(reader.shape, reader.chunks)
    ]
    problems: list[str] = []

    def one(job: tuple[Any, tuple[int, ...]]) -> None:
        reader, index = job
        try:
            reader.read_chunk(index)
        except ChunkVerificationError as exc:
            problems.append(str(exc))
        bar.update()

    with Progress(
        path, len(jobs), verb="checked", doing_verb="verifying", done_verb="verified"
    ) as bar:
        list(thread_map(one, jobs, threads or worker_count(remote=storage.remote)))
    return problems


def verify_store(
    storage: Storage,
    paths: list[str] | None = None,
    *,
    repair_damaged: bool = False,
    threads: int | None = None,
) -> VerifyReport:
    """Check every result of ``storage`` (or the group ``paths``): records, array metadata, every chunk of
    every level, tables, label indexes and provenance records. Nothing is changed unless
    ``repair_damaged``, which rebuilds damaged commit markers whose data verifies."""

    report = VerifyReport()
    if paths is None:
        paths = catalog.candidate_paths(storage, nested=True)
    what = f"store {storage.url}"
    for path in track(paths, what, doing="verifying", done="verified"):
        before = len(report.problems)
        record = _load_or_repair(storage, path, repair_damaged, report)
        if record is None:
            if len(report.problems) > before:
                report.damaged_records.append(path)
            continue
        report.results += 1
        if isinstance(record, TableRecord):
            report.tables += 1
        else:
            report.chunks += sum(
                grid_count(list(r.shape), list(r.chunks))
                for r in _level_readers(storage, path, record)
            )
        failed = _verify_data(storage, path, record, threads)
        if failed and repair_damaged and isinstance(record, ArrayRecord):
            rebuilt = _rebuild_digest_trees(storage, path, record)
            if rebuilt:
                report.repaired.append(rebuilt)
                forget_reader(storage, path)
                failed = _verify_data(storage, path, record, threads)
        report.failed_chunks += len(failed) if isinstance(record, ArrayRecord) else 0
        report.problems.extend(failed)
        if failed:
            report.damaged_data.append(path)
        bad_copy = _check_copy(storage, path, repair_damaged, report)
        report.problems.extend(bad_copy)
        damaged: list[Damage] = []
        read_records(storage, path, damaged=damaged)
        report.problems.extend(d.message for d in damaged)
        index = (
            []
            if "/" in path  # label images and tables have no label images
            else _check_labels_index(storage, path, repair_damaged, report)
        )
        report.problems.extend(index)
        if bad_copy or index:
            report.damaged_records.append(path)
    return report


def _load_or_repair(
    storage: Storage, path: str, repair_damaged: bool, report: VerifyReport
) -> ArrayRecord | TableRecord | None:
    """The checked record of ``path`` (repaired first if asked); None if not usable."""
    try:
        record = load_commit(storage, path)
    except IntegrityError as exc:
        damage: IntegrityError | None = exc
    else:
        if record is not None or is_leftover(storage, path):
            return record
        # a record copy but no marker: the marker was lost after the commit
        c = Checker(storage.url, path)
        damage = c.fail("the commit marker zarr.json", "is missing but its record copy exists")
    if not repair_damaged:
        report.problems.append(str(damage))
        return None
    try:
        report.repaired.append(repair(storage, path))
        return load_commit(storage, path)
    except IntegrityError as failed:
        report.problems.append(f"{damage} -- {failed}")
        return None


def _check_copy(
    storage: Storage, path: str, repair_damaged: bool, report: VerifyReport
) -> list[str]:
    """The record copy (what :func:`repair` rebuilds a marker from) is absent or intact."""
    marker = read_doc(storage, f"{path}/zarr.json")
    c = Checker(storage.url, path, copy_key(marker))
    try:
        copy = read_copy(storage, path)
        if copy is ABSENT:
            return []
        parse_document(storage.url, path, copy, key=copy_key(marker))
        return []
    except (ValueError, IntegrityError) as exc:
        if repair_damaged:
            write_copy(storage, path, marker)
            report.repaired.append(f"rewrote the record copy of {path!r} from its marker")
            return []
        return [str(c.fail("the record copy", f"is damaged ({exc}); --repair rewrites it"))]


def _check_labels_index(
    storage: Storage, path: str, repair_damaged: bool, report: VerifyReport
) -> list[str]:
    """The image's ``labels/zarr.json`` (a viewer index) lists exactly its committed labels."""

    names = [
        entry
        for entry in sorted(storage.list_dir(f"{path}/labels"))
        if parse_group_path(entry) is not None and _committed(storage, f"{path}/labels/{entry}")
    ]
    key = f"{path}/labels/zarr.json"
    try:
        doc = read_doc(storage, key)
    except ValueError:
        doc = None
    if not names and doc is ABSENT:
        return []
    expected = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"ome": labels_group_attrs(names)},
    }
    if doc == expected:
        return []
    if repair_damaged:
        update_labels_list(storage, path)
        report.repaired.append(f"rewrote the label index {key!r}")
        return []
    c = Checker(storage.url, path, "labels/zarr.json")
    return [str(c.fail("the label index", f"does not list the label images {names}"))]


def _committed(storage: Storage, path: str) -> bool:
    try:
        return load_commit(storage, path, arrays=False) is not None
    except IntegrityError:
        return False
