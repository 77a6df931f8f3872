"""Exports for tools that do not read zarr v3: OME-TIFF, and an NGFF 0.4 / zarr v2 copy.

Both read the result through its verified chunk reader, one slab of chunks at a time, so a
volume larger than memory exports with bounded memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.core.integrity import load_document
from cpr_zarr.core.reader import open_reader
from cpr_zarr.errors import StoreError, UnsupportedResultError
from cpr_zarr.model.ngff import default_axes
from cpr_zarr.storage import open_storage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from cpr_zarr.target import ZarrTarget

__all__ = ["to_ngff_v04", "to_ome_tiff"]

# NGFF (UDUNITS-2 names) -> OME-XML unit symbols
_OME_UNITS = {
    "angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "second": "s", "millisecond": "ms",
    "microsecond": "µs", "nanosecond": "ns", "minute": "min", "hour": "h",
}  # fmt: skip


def _metadata(target: ZarrTarget) -> tuple[str, list[float], list[str | None], list[float]]:
    if target.dtype == "table":
        raise UnsupportedResultError(
            f"{target.group_path!r} is a table; export it with cpr_zarr.to_csv(target, path)."
        )
    # the checked record of the result (an exported image says what the content hash vouches for)
    storage = open_storage(target.store_url, read_only=True)
    meta = open_reader(storage, target.group_path).record.image
    if meta is not None:
        return "".join(meta.axes), list(meta.scale), list(meta.units), list(meta.translation)
    ndim = len(target.shape)
    axes = default_axes(ndim)
    if axes is None:
        raise UnsupportedResultError(
            f"Cannot export {target.group_path!r} ({ndim}-D) as an image: images are 2-D to 5-D."
        )
    return axes, [1.0] * ndim, [None] * ndim, [0.0] * ndim


def _planes(target: ZarrTarget) -> Iterator[np.ndarray]:
    """The 2-D planes of the result in C order, reading one slab of chunks at a time."""
    data = target.get_data()
    if data.ndim == 2:
        yield np.asarray(data)
        return
    step = target.chunks[0]
    for start in range(0, target.shape[0], step):
        slab = np.asarray(data[start : start + step])
        yield from slab.reshape(-1, *slab.shape[-2:])


def to_ome_tiff(
    target: ZarrTarget, path: str | os.PathLike[str], *, compression: str | None = "zlib"
) -> Path:
    """Write a result as an OME-TIFF with its axes and physical pixel sizes.

    Returns the path written. Time, channel and z axes become OME dimensions; the last two
    axes are the image planes.
    """
    import tifffile

    axes, scale, units, _ = _metadata(target)
    if 0 in target.shape:
        raise UnsupportedResultError(
            f"Cannot export {target.group_path!r} of shape {target.shape} as an OME-TIFF: "
            "a TIFF page cannot be empty. Export it with cpr_zarr.to_ngff_v04, or read "
            "it with target.to_numpy()."
        )
    out = Path(path)
    meta: dict[str, Any] = {"axes": axes.upper()}
    for axis, size, unit in zip(axes, scale, units, strict=True):
        if axis in "xyz":
            meta[f"PhysicalSize{axis.upper()}"] = size
            if unit:
                meta[f"PhysicalSize{axis.upper()}Unit"] = _OME_UNITS.get(unit, unit)
        elif axis == "t":
            meta["TimeIncrement"] = size
            if unit:
                meta["TimeIncrementUnit"] = _OME_UNITS.get(unit, unit)
    tmp = out.with_name(out.name + ".partial")
    try:
        tifffile.imwrite(
            tmp,
            data=_planes(target),
            shape=target.shape,
            dtype=np.dtype(target.dtype),
            ome=True,
            metadata=meta,
            compression=compression,
            photometric="minisblack",
        )
        os.replace(tmp, out)  # never leave a half-written file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return out


def to_ngff_v04(target: ZarrTarget, path: str | os.PathLike[str]) -> Path:
    """Copy a result, with all its pyramid levels, to a new NGFF 0.4 image on zarr v2.

    For viewers that do not read zarr v3 yet (Fiji with MoBIE / n5-zarr).
    """
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale

    from cpr_zarr.core.pyramid import level_count, read_level

    _metadata(target)  # rejects tables and arrays that are not images
    out = Path(path)
    if out.exists():
        raise StoreError(
            f"Export destination {str(out)!r} already exists; choose a new path or remove it."
        )
    storage = open_storage(target.store_url, read_only=True)
    document = load_document(storage, target.group_path, arrays=False)
    if document is None or document.ome is None:
        raise UnsupportedResultError(
            f"{target.group_path!r} in store {target.store_url!r} has no OME-NGFF metadata "
            "(or was removed): nothing to export as NGFF."
        )
    multiscale = document.ome["multiscales"][0]
    levels = [read_level(target, i) for i in range(level_count(target))]
    # the same axes and per-level transforms as the zarr v3 original (NGFF 0.4 has them too)
    transforms = [d["coordinateTransformations"] for d in multiscale["datasets"]][: len(levels)]
    axes_meta = multiscale["axes"]
    group = zarr.open_group(str(out), mode="w-", zarr_format=2)
    write_multiscale(
        levels,
        group,
        fmt=FormatV04(),
        axes=axes_meta,
        coordinate_transformations=transforms,
        storage_options={"chunks": target.chunks},
        name=target.name,
    )
    return out
