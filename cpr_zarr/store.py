"""``ResultStore``: the one shared Zarr store that holds every result.

Layout (zarr v3)::

    results.zarr/
      zarr.json                      root group, attributes {"cpr_zarr": {"store_layout": 1}}
      denoised-<hash>/zarr.json      the commit marker: written last, carries ome + cpr_zarr attributes
      denoised-<hash>/0/...          the base array (Blosc zstd-1 + byte shuffle by default)
      _staging/...                   streaming writes before their hash is known

A group is a *result* only once its ``zarr.json`` holds ``attributes.cpr_zarr`` with the
content hash its path names. Everything else (a crashed writer's half-written folder, staging
leftovers) is ignored by :meth:`ResultStore.open` and listings. The root is created once,
with a create-if-absent write, and never rewritten; metadata is never consolidated at the
root (it would go stale with concurrent writers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import zarr.abc.store
import zarr.storage

from cpr_zarr.core import catalog, journal, lease
from cpr_zarr.errors import (
    AmbiguousReferenceError,
    CprZarrError,
    IntegrityError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidReferenceError,
    RecordError,
    ResultNotFoundError,
    StoreError,
)
from cpr_zarr.model.layout import HASH_HEX_LENGTH, MIN_PREFIX_LENGTH, parse_group_path
from cpr_zarr.model.records import STORE_LAYOUT, StoreRoot
from cpr_zarr.storage import describe_error, normalize_url, open_storage, to_json_bytes
from cpr_zarr.target import ZarrTarget

if TYPE_CHECKING:
    import builtins
    import os
    from collections.abc import Iterator, Mapping

    import pandas as pd
    from zarr.abc.store import Store

    from cpr_zarr.core.integrity import Damage
    from cpr_zarr.core.reader import ChunkReader
    from cpr_zarr.core.verify import VerifyReport
    from cpr_zarr.storage import Backend, Storage

__all__ = ["ResultStore", "normalize_url", "open_store", "save_table"]

logger = logging.getLogger("cpr_zarr")

_ROOT_DOC = StoreRoot().document()
_METADATA_KEYS = frozenset({"axes", "scale", "units", "translation", "levels"})
_STORES: dict[str, ResultStore] = {}
_STORES_LOCK = threading.Lock()


class ResultStore:
    """The shared Zarr store holding content-hash-named result groups.

    Parameters
    ----------
    url
        A folder path, ``file://`` URL, ``memory://`` URL, any fsspec URL (``s3://...``),
        or a zarr ``Store`` instance (``LocalStore``, ``FsspecStore``, ``ObjectStore``,
        ``MemoryStore``, ...).
    mode
        ``"a"`` (default) creates the store root if it is absent; ``"r"`` only reads and
        fails if the store does not exist.
    storage_options
        Credentials, endpoint and other options of remote stores (s3fs names such as
        ``key``, ``secret``, ``endpoint_url``, ``anon`` work with either backend). Never
        written anywhere.
    backend
        ``"obstore"`` or ``"fsspec"``: the library that serves a remote URL; ``None`` picks
        obstore for ``s3://`` when it is installed, fsspec otherwise (see the README's
        "Storage backends"). Local folders always use plain file operations.

    Raises
    ------
    StoreError
        If the location cannot be opened, or holds something that is not a cpr_zarr store.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | Store,
        *,
        mode: Literal["r", "a"] = "a",
        storage_options: dict[str, Any] | None = None,
        backend: Backend | None = None,
        **more_storage_options: Any,
    ) -> None:
        if mode not in ("r", "a"):
            raise InvalidArgumentError(
                f"Invalid mode {mode!r} for ResultStore: use 'a' (read and save, "
                "creating the store if absent) or 'r' (read only). Stores are never "
                "overwritten: to start afresh, use a new folder."
            )
        self.mode = mode
        options = {**(storage_options or {}), **more_storage_options}
        if isinstance(url, zarr.abc.store.Store):
            # a zarr Store instance: its own backend, named by a URL that re-opens it (or a
            # process-local zarrstore:// name); see cpr_zarr.storage._zarrstore
            storage = open_storage(url, read_only=mode == "r")
            self.url, local_path = storage.url, None
        else:
            self.url, local_path = normalize_url(url)
            if local_path is not None:
                self._check_folder(local_path)
            storage = open_storage(
                self.url,
                read_only=mode == "r",
                storage_options=options,
                reuse=self.url.startswith("zarrstore://"),
                backend=backend,
            )
        if local_path is None and isinstance(storage.zarr_store, zarr.storage.LocalStore):
            self._check_folder(Path(storage.url))
        #: the storage layer under this store (see :mod:`cpr_zarr.storage`)
        self.storage: Storage = storage
        self._ensure_root()
        with _STORES_LOCK:
            if mode == "a" or self.url not in _STORES:
                _STORES[self.url] = self

    # -- opening ---------------------------------------------------------------------------

    def _check_folder(self, path: Any) -> None:
        read_only = self.mode == "r"
        if read_only and path.is_dir() and not (path / "zarr.json").exists():
            raise StoreError(
                f"No result store at {self.url!r} (no zarr.json there). Check the path, "
                "or open it with mode='a' to create it."
            )
        if read_only or not path.is_dir():
            return
        # list first, then look for the root document: a concurrent creator writes the
        # root before anything else, so whatever the listing saw next to a missing root was
        # there before any store was (looking for the root first would take the first
        # result of a creator that won the race meanwhile for foreign data). A creator's
        # temporary file alone is not foreign (storage/_local.py writes the root document
        # under a hidden name, then links it)
        entries = [e.name for e in path.iterdir() if not e.name.endswith(".partial")]
        if entries and not (path / "zarr.json").exists():
            raise StoreError(
                f"Cannot create a result store in {self.url!r}: the folder is not empty "
                f"(it holds {sorted(entries)[:3]!r}"
                f"{f' and {len(entries) - 3} more' if len(entries) > 3 else ''}) "
                "and is not a Zarr store. Choose a new or empty folder, e.g. "
                f"{str(path / 'results.zarr')!r}."
            )

    def _read_root(self) -> Any:
        """The root document; ``None`` if absent. A present but unreadable one is an error:
        reporting it as absent would hide damage (and invite creating a store over it)."""
        raw = self.storage.get("zarr.json")
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise StoreError(
                f"The root zarr.json of result store {self.url!r} is corrupt: it is not valid "
                f"JSON ({exc}; {len(raw)} bytes, starting {raw[:40]!r}). The results in the "
                "store are not affected. To resolve: restore the file from a backup, or "
                f"replace it with {json.dumps(_ROOT_DOC, separators=(',', ':'))} (the "
                "document cpr_zarr writes there)."
            ) from exc
        if not isinstance(doc, dict):
            raise StoreError(
                f"The root zarr.json of result store {self.url!r} is corrupt: it holds a "
                f"{type(doc).__name__} ({raw[:40]!r}), not a JSON object. To resolve: replace "
                f"it with {json.dumps(_ROOT_DOC, separators=(',', ':'))}."
            )
        return doc

    def _ensure_root(self) -> None:
        try:
            doc = self._read_root()
            if doc is None and self.mode == "a":
                # create-if-absent: concurrent creators all write the same document and
                # an existing root (ours or anyone's) is never overwritten
                self.storage.set_if_not_exists("zarr.json", to_json_bytes(_ROOT_DOC))
                doc = self._read_root()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"Cannot open result store {self.url!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if doc is None:
            raise StoreError(
                f"No result store at {self.url!r} (no zarr.json there). Check the URL, or open "
                "it with mode='a' to create it."
            )
        attrs = doc.get("attributes", {})
        if (
            not isinstance(attrs, dict)
            or not isinstance(attrs.get("cpr_zarr"), dict)
            or doc.get("node_type") != "group"
            or doc.get("zarr_format") != 3
        ):
            raise StoreError(
                f"{self.url!r} is a Zarr node that cpr_zarr did not create "
                f"(node_type={doc.get('node_type')!r}, zarr_format={doc.get('zarr_format')!r}). "
                "cpr_zarr never writes into other data: choose a new folder or URL for results."
            )
        try:
            layout = StoreRoot.from_dict(attrs["cpr_zarr"]).store_layout
        except RecordError as exc:
            raise StoreError(
                f"The root zarr.json of result store {self.url!r} is corrupt: {exc}. To "
                f"resolve: replace it with {json.dumps(_ROOT_DOC, separators=(',', ':'))}."
            ) from exc
        if layout != STORE_LAYOUT:
            raise StoreError(
                f"Result store {self.url!r} has store_layout {layout!r}; this cpr_zarr reads "
                f"layout {STORE_LAYOUT}. Upgrade cpr_zarr or use another store."
            )
        # a new store starts its catalog (concurrent creators write the same documents); one
        # written before catalogs existed keeps none until `cpr-zarr catalog rebuild` (an
        # empty catalog would hide its results)
        if (
            self.mode == "a"
            and not journal.enabled(self.storage)
            and not catalog.candidate_paths(self.storage)
        ):
            try:
                journal.create(self.storage)
            except Exception as exc:
                raise StoreError(
                    f"Cannot open result store {self.url!r}: {describe_error(exc)}"
                ) from exc

    def __reduce__(self) -> tuple[Any, ...]:
        # storage options are not pickled (credentials): the unpickling process re-opens the
        # URL with its own environment, or finds the store it already opened
        return (open_store, (self.url, self.mode))

    def __repr__(self) -> str:
        return f"ResultStore({self.url!r}, mode={self.mode!r})"

    # -- results ---------------------------------------------------------------------------

    def check(self, target: ZarrTarget) -> ZarrTarget:
        """Re-check a pointer against the store, reading no chunk: its record must hash to
        its content hash, the array metadata agree with the record, and the pointer's
        shape, dtype and chunks be the record's.

        Raises
        ------
        ResultNotFoundError
            If the result is not (or no longer) committed.
        IntegrityError
            If anything disagrees (the error names the field).
        """
        stored = catalog.target_for(
            self.storage, target.group_path, catalog.load(self.storage, target.group_path)
        )
        for field in ("content_hash", "shape", "dtype", "chunks"):
            if getattr(stored, field) != getattr(target, field):
                raise IntegrityError(
                    f"The pointer to result {target.group_path!r} in store {self.url!r} says "
                    f"{field}={getattr(target, field)!r}, but the committed record says "
                    f"{getattr(stored, field)!r}: the pointer was changed or belongs to other "
                    "content. Nothing of it is served. Open the result again "
                    "(store.open(ref)) or re-run the task that produced it.",
                    store_url=self.url,
                    group_path=target.group_path,
                    field=f"pointer.{field}",
                )
        return stored

    def damaged(self) -> builtins.list[Damage]:
        """Results whose commit record is damaged (skipped by listings; see ``cpr-zarr verify``)."""
        return catalog.scan(self.storage)[1]

    def targets(self) -> Iterator[ZarrTarget]:
        """Every committed result in the store (label images and tables included), by
        group path.

        From the store's catalog when it has one: a few requests whatever the store size,
        and each result's commit record is checked when it is opened or read. Without one
        (a store written before catalogs, until ``cpr-zarr catalog rebuild``) every group's
        record is read, and damaged ones are skipped with a warning. Either way
        :meth:`damaged` (``cpr-zarr verify``) lists the damaged results.
        """
        from cpr_zarr.core.inventory import read_catalog

        state = read_catalog(self.storage)
        if state is not None:
            yield from catalog.listed(self.storage, state)
            return
        found, damaged = catalog.scan(self.storage)
        for damage in damaged:
            logger.warning("Skipping a damaged result: %s", damage.message)
        yield from found

    def __iter__(self) -> Iterator[ZarrTarget]:
        return self.targets()

    def __contains__(self, ref: object) -> bool:
        try:
            self.open(ref)  # type: ignore[arg-type]
        except (ResultNotFoundError, AmbiguousReferenceError):
            return False
        return True

    def open(self, ref: str | ZarrTarget) -> ZarrTarget:
        """Find a committed result by content hash, unique hash prefix, group path or name.

        Raises
        ------
        ResultNotFoundError
            If no committed result matches.
        AmbiguousReferenceError
            If a hash prefix matches several results.
        IntegrityError
            If the result's commit record does not hash to its content hash, or its stored
            array metadata disagrees with the record (nothing of it is served).
        InvalidReferenceError
            If a path reference would name something outside the store (``..``, ``/x``, ...).
        """
        if isinstance(ref, ZarrTarget):
            ref = ref.group_path
        if not isinstance(ref, str) or not ref:
            raise InvalidArgumentTypeError(
                f"A result reference must be a non-empty str (a content hash, a hash prefix "
                f"of at least {MIN_PREFIX_LENGTH} hex digits, a group path or a result name), "
                f"got {ref!r} for store {self.url!r}. Example: store.open('denoised')."
            )
        ref = ref.rstrip("/")
        if parse_group_path(ref) is None and ("/" in ref or "\\" in ref or ref in (".", "..")):
            raise InvalidReferenceError(
                f"Reference {ref!r} is not a result of store {self.url!r}: a path reference is "
                "'<name>-<hash>', '<name>-<hash>/labels/<name>-<hash>' or "
                "'<name>-<hash>/tables/<name>-<hash>', relative to the store "
                "root, without '..', '.', empty segments, a leading '/' or backslashes. Give "
                "the group path as `cpr-zarr ls` prints it, a content hash or a hash prefix."
            )
        if parse_group_path(ref) is not None:
            return catalog.target_for(self.storage, ref, catalog.load(self.storage, ref))
        lowered = ref.lower()
        is_prefix = MIN_PREFIX_LENGTH <= len(lowered) <= HASH_HEX_LENGTH and all(
            c in "0123456789abcdef" for c in lowered
        )
        matches: dict[str, ZarrTarget] = {}
        damaged: dict[str, IntegrityError] = {}
        for path in self._candidates(ref, lowered if is_prefix else None):
            name = path.rsplit("/", 1)[-1][: -HASH_HEX_LENGTH - 1]
            content_hash = path[-HASH_HEX_LENGTH:]
            if not (is_prefix and content_hash.startswith(lowered)) and name != ref:
                continue
            if content_hash in matches:
                continue
            try:
                record = catalog.committed_or_raise(self.storage, path)
            except IntegrityError as exc:  # a damaged match is reported, never skipped
                damaged.setdefault(content_hash, exc)
                continue
            if record is not None:
                matches[content_hash] = catalog.target_for(self.storage, path, record)
        damaged = {h: exc for h, exc in damaged.items() if h not in matches}
        if len(matches) + len(damaged) == 1:
            if damaged:
                raise next(iter(damaged.values()))
            target = next(iter(matches.values()))
            catalog.load(self.storage, target.group_path)  # the array metadata must agree too
            return target
        if damaged:
            found = ", ".join(sorted(t.group_path for t in matches.values()))
            broken = ", ".join(sorted(exc.group_path for exc in damaged.values()))
            raise AmbiguousReferenceError(
                f"Reference {ref!r} matches results in {self.url!r} of which some are damaged: "
                f"{found or '-'} (intact); {broken} (damaged). Give the group path or more "
                "digits of the hash, and run `cpr-zarr verify` on the store."
            )
        if not matches:
            raise ResultNotFoundError(
                f"No committed result named or hashed {ref!r} in store {self.url!r}. A "
                "reference is a group path like 'denoised-<hash>', a content hash, a hash "
                f"prefix of at least {MIN_PREFIX_LENGTH} hex digits, or a result name. List "
                "what the store holds with store.targets() (or `cpr-zarr ls`)."
            )
        if len(matches) > 1:
            found = ", ".join(sorted(t.group_path for t in matches.values()))
            raise AmbiguousReferenceError(
                f"Reference {ref!r} matches {len(matches)} results in {self.url!r}: {found}. "
                "Give the group path or more digits of the hash."
            )
        return next(iter(matches.values()))

    def _candidates(self, ref: str, prefix: str | None) -> builtins.list[str]:
        """Group paths that may be result ``ref`` (a name, or a hash ``prefix``).

        With a catalog: the hash index for a prefix (one listing), the catalog's rows for a
        name; without one, every group path under the root.
        """
        if prefix is not None:
            indexed = journal.lookup(self.storage, prefix)
            if indexed:
                return [path for _, path in indexed]
        from cpr_zarr.core.inventory import read_catalog

        state = read_catalog(self.storage)
        if state is None:
            return catalog.candidate_paths(self.storage, nested=True)
        named = sorted(p for p in state.rows if p.rsplit("/", 1)[-1][: -HASH_HEX_LENGTH - 1] == ref)
        if named or prefix is None:
            return named
        # a prefix the index does not hold: the catalog may know it still (a writer killed
        # between its journal segment and its index key)
        return sorted(p for p in state.rows if p[-HASH_HEX_LENGTH:].startswith(prefix))

    def save(
        self,
        data: Any,
        name: str = "result",
        *,
        chunks: tuple[int, ...] | int | None = None,
        compressor: Any = None,
        provenance: Mapping[str, Any] | None = None,
        **metadata: Any,
    ) -> ZarrTarget:
        """Store an array as a content-hash-named result group and return its pointer.

        Parameters
        ----------
        data
            A numpy array (bool, int, uint, float or complex; 1-D to 5-D), a Dask array
            (written chunk by chunk, never held whole in memory), a ``cpr_zarr.Image`` or
            ``cpr_zarr.Labels`` (array plus NGFF metadata), a pandas DataFrame (a table), or
            a ``cpr_zarr.Table`` (a DataFrame of measurements of a label image, stored with
            its image in the Fractal/ngio layout).
        name
            Readable part of the group path (letters, digits, ``_ . -``).
        chunks
            Chunk shape of the stored array; default about 8 MiB per chunk.
        compressor
            A zarr v3 bytes-to-bytes codec; default ``BloscCodec(cname="zstd", clevel=1,
            shuffle="shuffle")``. It changes the files, not the content hash.
        provenance
            Extra fields for the provenance record this save adds (``cpr_zarr.task`` passes
            the task and flow run, parameters and input hashes).
        **metadata
            OME-NGFF metadata and pyramid: ``axes="zyx"``, ``scale=(2.0, 0.65, 0.65)``,
            ``units="micrometer"``, ``translation=...``, ``levels=N``. Not part of the hash.

        Returns
        -------
        ZarrTarget
            Equal to the target of an earlier save of the same content (nothing is rewritten).

        Raises
        ------
        UnsupportedResultError
            For values that are not numpy/Dask arrays, or have an unsupported dtype or ndim.
        InvalidNameError
            For names that cannot be part of a group path.
        """
        self.storage.check_writable()
        # A save that reuses a committed result (or commits one) can meet a collection
        # removing it: the provenance record (or, if it cannot be written, a lease) is this
        # save's flag, written before looking for a collection's claim; if the result went
        # meanwhile, it is saved again (cpr_zarr.core.lease has the protocol).
        for _ in range(3):
            target, recorded = self._save_once(data, name, chunks, compressor, provenance, metadata)
            lease.checkpoint("save.recorded")
            flag = None if recorded else lease.Lease(self.storage, target.group_path).key
            if flag is not None:
                with contextlib.suppress(OSError):
                    lease.put(self.storage, flag)
            lease.wait_unclaimed(self.storage, target.group_path)
            if flag is not None:
                with contextlib.suppress(OSError):
                    lease.remove(self.storage, flag)
            if catalog.committed(self.storage, target.group_path) is not None:
                lease.checkpoint("save.returned")
                return target
            logger.info(
                "Result %s in store %s was removed while being saved again; saving it again.",
                target.group_path,
                self.url,
            )
        raise StoreError(
            f"Result {target.group_path!r} in store {self.url!r} was removed three times while "
            "it was being saved. Something is deleting results of this store as they are "
            "written (a gc loop, a script, a lifecycle rule): stop it, then run the task again."
        )

    def _save_once(
        self,
        data: Any,
        name: str,
        chunks: Any,
        compressor: Any,
        provenance: Mapping[str, Any] | None,
        metadata: dict[str, Any],
    ) -> tuple[ZarrTarget, bool]:
        """One save and its provenance record; the target and whether the record was written."""
        from cpr_zarr.core.provenance import write_record
        from cpr_zarr.core.table import save_table as save_table_to
        from cpr_zarr.core.writer import save as save_array

        self.storage.check_writable()
        unknown = sorted(set(metadata) - _METADATA_KEYS)
        if unknown:
            raise InvalidArgumentTypeError(
                f"ResultStore.save got unknown argument(s) {unknown!r} for result {name!r} in "
                f"store {self.url!r}: it takes chunks, compressor, provenance and the image "
                f"metadata {sorted(_METADATA_KEYS)}. Check the spelling, e.g. scale=(2.0, 0.65, "
                "0.65)."
            )
        labels = None
        if type(data).__module__ == "cpr_zarr.core.table":  # a Table (no pandas import else)
            from cpr_zarr.core.table import Table

            if isinstance(data, Table):
                data, labels = data.data, data.labels
        try:
            if labels is not None or (
                type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")
            ):
                given = {"chunks": chunks, "compressor": compressor, **metadata}
                given = {k: v for k, v in given.items() if v is not None}
                if given:
                    raise InvalidArgumentError(
                        f"Cannot save table {name!r} to store {self.url!r} with {given!r}: "
                        "tables are stored as parquet files (or one array per column) with "
                        "fixed chunks and codecs, "
                        "and have no image metadata. Save the DataFrame without these arguments."
                    )

                target = save_table_to(self.storage, data, name, labels=labels)
            else:
                target = save_array(
                    self.storage, data, name, chunks=chunks, compressor=compressor, **metadata
                )
        except CprZarrError:
            raise
        except Exception as exc:
            if not (isinstance(exc, OSError) or _is_storage_error(exc)):
                raise
            raise StoreError(
                f"Saving result {name!r} to store {self.url!r} failed: {describe_error(exc)}"
                ". Nothing was committed (a later save of the same data completes or "
                "replaces what was written). Check that the store is reachable and writable, "
                "then run the task again."
            ) from exc
        kind = "table" if target.dtype == "table" else "array"
        try:
            record = write_record(self.storage, target, provenance, output=name)
        except Exception as exc:  # the result is committed and valid: do not fail the task
            logger.warning(
                "Result %s was saved in %s, but its provenance record could not be written: %s",
                target.group_path,
                self.url,
                exc,
            )
            journal.note_saved(self.storage, target, kind, None)
            return target, False
        journal.note_saved(self.storage, target, kind, record)  # after the commit and record
        return target, True

    def list(self) -> pd.DataFrame:
        """One row per committed result: name, hash, kind, shape, dtype, chunks, stored and
        raw bytes, compression ratio, created, last produced, last task and flow run."""
        from cpr_zarr.core.inventory import list_results

        return list_results(self.storage)

    def lineage(self, ref: str | ZarrTarget) -> dict[str, builtins.list[ZarrTarget]]:
        """Results upstream (``"inputs"``) and downstream (``"outputs"``) of ``ref``."""
        from cpr_zarr.core.inventory import lineage

        return lineage(self.storage, self.open(ref))

    def provenance(self, ref: str | ZarrTarget) -> builtins.list[dict[str, Any]]:
        """Every provenance record of a result, oldest first."""
        from cpr_zarr.core.provenance import read_records

        return read_records(self.storage, self.open(ref).group_path)

    def delete(self, ref: str | ZarrTarget) -> ZarrTarget | None:
        """Remove a result (at once on local disk, marker first on object stores).

        A damaged result (see :meth:`damaged`) is removed too; ``None`` is returned for it.
        A save of the same content running at the same moment waits, then saves it again.

        Raises
        ------
        ResultNotFoundError, InvalidReferenceError
            As :meth:`open`.
        StoreError
            If the store cannot be written (read-only file system, no permission).
        """
        from cpr_zarr.core.collector import delete_group

        self.storage.check_writable()
        target: ZarrTarget | None
        try:
            target = self.open(ref)
            path = target.group_path
        except IntegrityError as exc:  # damaged: its record cannot be trusted, but it can go
            target, path = None, exc.group_path
        # one rename on local disk; on object stores the record copy, then the marker, then
        # the rest: a delete stopped halfway never leaves a marker-less group with a copy
        delete_group(self.storage, path)
        return target

    def reader(self, target: ZarrTarget) -> ChunkReader:
        """A verifying chunk reader for a target of this store (cached per group).

        Raises
        ------
        ResultNotFoundError
            If the result is not (or no longer) committed.
        IntegrityError
            If its record or array metadata is damaged.
        """
        from cpr_zarr.core.reader import open_reader

        return open_reader(self.storage, target.group_path)

    def verify(
        self,
        refs: builtins.list[str | ZarrTarget] | tuple[str | ZarrTarget, ...] = (),
        *,
        repair: bool = False,
        threads: int | None = None,
    ) -> VerifyReport:
        """Check every result (or ``refs``): records, array metadata, every chunk of every
        level, tables, label indexes and provenance records. Nothing is changed unless
        ``repair``, which rebuilds damaged commit markers whose data verifies.

        Raises
        ------
        ResultNotFoundError, AmbiguousReferenceError, InvalidReferenceError
            As :meth:`open`, for a reference that names no result.
        """
        from cpr_zarr.core.verify import verify_store

        paths: builtins.list[str] | None = None
        if refs:
            paths = []
            for ref in refs:
                try:
                    paths.append(self.open(ref).group_path)
                except IntegrityError as exc:  # damaged: verified (and repaired) by path
                    paths.append(exc.group_path)
        return verify_store(self.storage, paths, repair_damaged=repair, threads=threads)


def _is_storage_error(exc: BaseException) -> bool:
    """Whether an exception comes from the storage layer (botocore, aiohttp, fsspec)."""
    module = type(exc).__module__
    return module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "obstore"))


def save_table(store: ResultStore, df: pd.DataFrame, name: str = "table") -> ZarrTarget:
    """Save a pandas DataFrame as a table result (what ``store.save(df, name)`` does).

    Raises
    ------
    UnsupportedResultError
        If ``df`` is not a DataFrame, or has columns cpr_zarr cannot store.
    """
    if type(df).__name__ != "DataFrame":
        from cpr_zarr.core.table import save_table as save_table_to

        return save_table_to(store.storage, df, name)  # raises, naming what it got
    return store.save(df, name)


def open_store(
    url: str, mode: Literal["r", "a"] = "r", storage_options: dict[str, Any] | None = None
) -> ResultStore:
    """The store for a URL: the instance this process already opened, else a new one.

    Storage options are not part of a URL: for remote stores opened here (e.g. from a
    pointer in another process) credentials come from the environment or fsspec config.
    """
    with _STORES_LOCK:
        existing = _STORES.get(url)
    if existing is not None and (existing.mode == "a" or mode == "r"):
        return existing
    return ResultStore(url, mode=mode, storage_options=storage_options)
