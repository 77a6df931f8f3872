"""cpr_zarr: Prefect task results as content-hashed, chunk-verified groups in one Zarr store.

Every public name is loaded on first use (PEP 562): ``import cpr_zarr`` costs milliseconds,
and the ``cpr-zarr`` command line imports zarr, Dask, pandas or Prefect only in the
commands that need them (``cpr-zarr --version`` needs none; ``ResultStore`` needs zarr;
``cpr_zarr.task`` needs Prefect).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CONTENT_INPUTS",
    "AmbiguousReferenceError",
    "ChunkVerificationError",
    "ContentInputs",
    "CprZarrError",
    "Image",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidNameError",
    "InvalidReferenceError",
    "Labels",
    "RecordError",
    "ResultNotFoundError",
    "ResultStore",
    "StoreError",
    "Table",
    "TiffSource",
    "UnsupportedResultError",
    "ZarrSource",
    "ZarrTarget",
    "ZarrTask",
    "compute",
    "delete_on_rollback",
    "open_store",
    "pointer_serializer",
    "read_level",
    "read_table",
    "save_table",
    "task",
    "to_csv",
    "to_ngff_v04",
    "to_ome_tiff",
    "written_targets",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from cpr_zarr.cache import CONTENT_INPUTS, ContentInputs
    from cpr_zarr.core.compute import compute
    from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff
    from cpr_zarr.core.pyramid import read_level
    from cpr_zarr.core.source import TiffSource, ZarrSource
    from cpr_zarr.core.table import Table, read_table, to_csv
    from cpr_zarr.decorator import ZarrTask, delete_on_rollback, task, written_targets
    from cpr_zarr.errors import (
        AmbiguousReferenceError,
        ChunkVerificationError,
        CprZarrError,
        IntegrityError,
        InvalidArgumentError,
        InvalidArgumentTypeError,
        InvalidNameError,
        InvalidReferenceError,
        RecordError,
        ResultNotFoundError,
        StoreError,
        UnsupportedResultError,
    )
    from cpr_zarr.model.ngff import Image, Labels
    from cpr_zarr.serializer import pointer_serializer
    from cpr_zarr.store import ResultStore, open_store, save_table
    from cpr_zarr.target import ZarrTarget

# where each public name lives. Loading on first use keeps the cost where it is paid:
# zarr, Dask and pandas take about a second to import, Prefect several.
_LAZY = {
    "CONTENT_INPUTS": "cpr_zarr.cache",
    "ContentInputs": "cpr_zarr.cache",
    "compute": "cpr_zarr.core.compute",
    "to_ngff_v04": "cpr_zarr.core.export",
    "to_ome_tiff": "cpr_zarr.core.export",
    "read_level": "cpr_zarr.core.pyramid",
    "TiffSource": "cpr_zarr.core.source",
    "ZarrSource": "cpr_zarr.core.source",
    "read_table": "cpr_zarr.core.table",
    "Table": "cpr_zarr.core.table",
    "save_table": "cpr_zarr.store",
    "to_csv": "cpr_zarr.core.table",
    "ZarrTask": "cpr_zarr.decorator",
    "delete_on_rollback": "cpr_zarr.decorator",
    "task": "cpr_zarr.decorator",
    "written_targets": "cpr_zarr.decorator",
    **dict.fromkeys(
        (
            "AmbiguousReferenceError",
            "ChunkVerificationError",
            "CprZarrError",
            "IntegrityError",
            "InvalidArgumentError",
            "InvalidArgumentTypeError",
            "InvalidNameError",
            "InvalidReferenceError",
            "RecordError",
            "ResultNotFoundError",
            "StoreError",
            "UnsupportedResultError",
        ),
        "cpr_zarr.errors",
    ),
    "Image": "cpr_zarr.model.ngff",
    "Labels": "cpr_zarr.model.ngff",
    "pointer_serializer": "cpr_zarr.serializer",
    "ResultStore": "cpr_zarr.store",
    "open_store": "cpr_zarr.store",
    "ZarrTarget": "cpr_zarr.target",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cpr_zarr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# cpr_zarr's log records reach the Prefect run logger inside a run (cpr_zarr.logs imports
# only the standard library; Prefect only if a run could be active)
importlib.import_module("cpr_zarr.logs")
