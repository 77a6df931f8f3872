"""cpr_zarr: Prefect task results as content-hashed, chunk-verified groups in one Zarr store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cpr_zarr.logs  # noqa: F401  (installs the forwarding of cpr_zarr records to Prefect run logs)
from cpr_zarr.core.compute import compute
from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff
from cpr_zarr.core.pyramid import read_level
from cpr_zarr.core.source import TiffSource, ZarrSource
from cpr_zarr.core.table import read_table, to_csv
from cpr_zarr.errors import (
    AmbiguousReferenceError,
    ChunkVerificationError,
    CprZarrError,
    IntegrityError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNameError,
    InvalidReferenceError,
    ResultNotFoundError,
    StoreError,
    UnsupportedResultError,
)
from cpr_zarr.model.ngff import Image, Labels
from cpr_zarr.store import ResultStore, open_store, save_table
from cpr_zarr.target import ZarrTarget

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
    "ResultNotFoundError",
    "ResultStore",
    "StoreError",
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
    from cpr_zarr.decorator import ZarrTask, delete_on_rollback, task, written_targets
    from cpr_zarr.serializer import pointer_serializer

# the Prefect-facing names import Prefect (seconds): load them on first use, so that
# reading a store (the `cpr-zarr` command line, notebooks) does not pay for it
_LAZY = {
    "CONTENT_INPUTS": "cpr_zarr.cache",
    "ContentInputs": "cpr_zarr.cache",
    "task": "cpr_zarr.decorator",
    "ZarrTask": "cpr_zarr.decorator",
    "delete_on_rollback": "cpr_zarr.decorator",
    "written_targets": "cpr_zarr.decorator",
    "pointer_serializer": "cpr_zarr.serializer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cpr_zarr' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
