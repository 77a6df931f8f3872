"""Exports for tools that do not read zarr v3: OME-TIFF, and an NGFF 0.4 / zarr v2 copy.

Both read the result through its verified chunk reader, one slab of chunks at a time, so a
volume larger than memory exports with bounded memory.

* :func:`to_ngff_v04` copies every pyramid level under the original dataset paths
  (``0``, ``1``, ...), the multiscales ``type`` and ``metadata``, an ``omero`` rendering
  block, the image's label images (``labels/<name>`` with ``image-label``) and its tables
  (``tables/<name>``, the Fractal/ngio layout), compressed
  with Blosc lz4 (level 5, byte shuffle): the compressor bioformats2raw writes by default
  and Java zarr v2 readers (n5-zarr as in Fiji/MoBIE, JZarr) decode; ``compressor="zlib"``
  for readers without a native Blosc library (zlib is pure Java everywhere).
* :func:`to_ome_tiff` writes a tiled pyramid (sub-resolutions as SubIFDs, each half the
  size in y and x, down to :data:`TIFF_PYRAMID_MIN` pixels) for images larger than that,
  which Bio-Formats (Fiji, QuPath) opens level by level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.core import catalog
from cpr_zarr.core.reader import ChunkReader, open_reader
from cpr_zarr.errors import InvalidArgumentError, StoreError, UnsupportedResultError
from cpr_zarr.model.ngff import default_axes
from cpr_zarr.storage import open_storage

if TYPE_CHECKING:
    from collections.abc import Iterator

    import zarr

    from cpr_zarr.target import ZarrTarget

__all__ = ["TIFF_PYRAMID_MIN", "TIFF_TILE", "to_ngff_v04", "to_ome_tiff"]

# NGFF (UDUNITS-2 names) -> OME-XML unit symbols
_OME_UNITS = {
    "angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "second": "s", "millisecond": "ms",
    "microsecond": "µs", "nanosecond": "ns", "minute": "min", "hour": "h",
}  # fmt: skip

# OME-TIFF: images with y or x longer than this get sub-resolutions, halved down to it
TIFF_PYRAMID_MIN = 512
TIFF_TILE = (256, 256)
# omero channel colours: white for one channel, else these in turn
_CHANNEL_COLORS = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00", "FFFFFF")


def _metadata(target: ZarrTarget) -> tuple[str, list[float], list[str | None], list[float]]:
    if target.dtype == "table":
        raise UnsupportedResultError(
            f"{target.group_path!r} is a table; export it with cpr_zarr.to_csv(target, path)."
        )
    meta = _reader(target).record.image
    if meta is not None:
        return "".join(meta.axes), list(meta.scale), list(meta.units), list(meta.translation)
    ndim = len(target.shape)
    axes = default_axes(ndim)
    if axes is None:
        raise UnsupportedResultError(
            f"Cannot export {target.group_path!r} ({ndim}-D) as an image: images are 2-D to 5-D."
        )
    return axes, [1.0] * ndim, [None] * ndim, [0.0] * ndim


def _slabs(data: Any, step: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(region along axis 0, values)`` of a lazy array, ``step`` rows at a time."""
    for start in range(0, data.shape[0], step):
        region = slice(start, min(start + step, data.shape[0]))
        yield region, np.asarray(data[region])


def _planes(data: Any, step: int) -> Iterator[np.ndarray]:
    """The 2-D planes of a lazy array in C order, reading ``step`` along axis 0 at a time."""
    if data.ndim == 2:
        yield np.asarray(data)
        return
    for _, slab in _slabs(data, step):
        yield from slab.reshape(-1, *slab.shape[-2:])


def _tiles(planes: Iterator[np.ndarray], tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Each plane cut into tiles, row by row (tifffile zero-pads the edge tiles)."""
    for plane in planes:
        for y in range(0, plane.shape[0], tile[0]):
            for x in range(0, plane.shape[1], tile[1]):
                yield plane[y : y + tile[0], x : x + tile[1]]


def _halved(planes: Iterator[np.ndarray], times: int, method: str) -> Iterator[np.ndarray]:
    """Each plane halved ``times`` times in y and x, as cpr_zarr's pyramid levels are."""
    from cpr_zarr.core.pyramid import downsample

    for plane in planes:
        for _ in range(times):
            plane = downsample(plane, (2, 2), method)
        yield plane


def _tiff_levels(shape: tuple[int, ...]) -> int:
    """Number of OME-TIFF resolutions: halve y and x until neither exceeds the minimum."""
    y, x = shape[-2:]
    levels = 1
    while max(y, x) > TIFF_PYRAMID_MIN:
        y, x = -(-y // 2), -(-x // 2)
        levels += 1
    return levels


def to_ome_tiff(
    target: ZarrTarget,
    path: str | os.PathLike[str],
    *,
    compression: str | None = "zlib",
    pyramid: bool = True,
) -> Path:
    """Write a result as an OME-TIFF with its axes and physical pixel sizes.

    Returns the path written. Time, channel and z axes become OME dimensions; the last two
    axes are the image planes. With ``pyramid`` (default: when y or x is longer than
    :data:`TIFF_PYRAMID_MIN`) the file is tiled and each plane gets sub-resolutions (SubIFDs),
    halved in y and x down to that size: by the mean for images, by nearest (strided)
    sampling for label images and masks, as cpr_zarr's own levels.
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
    levels = _tiff_levels(target.shape) if pyramid else 1
    pyramid = levels > 1
    dtype = np.dtype(target.dtype)
    label = _reader(target).record.labels_of is not None
    method = "nearest" if label or dtype.kind == "b" else "mean"
    data = target.get_data()
    step = target.chunks[0]
    options: dict[str, Any] = {
        "dtype": dtype, "compression": compression, "photometric": "minisblack",
    }  # fmt: skip
    if pyramid:
        options["tile"] = TIFF_TILE
    tmp = out.with_name(out.name + ".partial")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            planes = _planes(data, step)
            tif.write(
                data=_tiles(planes, TIFF_TILE) if pyramid else planes,
                shape=target.shape,
                metadata=meta,
                subifds=levels - 1 if pyramid else None,
                **options,
            )
            for number in range(1, levels if pyramid else 1):
                # each level is computed from the base planes again: memory stays at a plane
                halved = _halved(_planes(data, step), number, method)
                shape = list(target.shape)
                for _ in range(number):
                    shape[-2:] = [-(-shape[-2] // 2), -(-shape[-1] // 2)]
                tif.write(
                    data=_tiles(halved, TIFF_TILE),
                    shape=tuple(shape),
                    subfiletype=1,
                    metadata=None,
                    **options,
                )
        os.replace(tmp, out)  # never leave a half-written file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _ome(target: ZarrTarget) -> dict[str, Any]:
    """The ``ome`` attributes of a result group, read with plain zarr."""
    import zarr

    group = zarr.open_group(
        target.zarr_array().store, path=target.group_path, mode="r", zarr_format=3
    )
    ome = group.attrs.get("ome")
    if not isinstance(ome, dict):
        raise UnsupportedResultError(
            f"Result {target.group_path!r} in store {target.store_url!r} has no OME-NGFF "
            "metadata to export; export it as an OME-TIFF (cpr_zarr.to_ome_tiff)."
        )
    return ome


def _label_targets(target: ZarrTarget) -> list[ZarrTarget]:
    """The label images listed in the image's ``labels`` group, in its order."""
    import zarr

    try:
        group = zarr.open_group(
            target.zarr_array().store, path=f"{target.group_path}/labels", mode="r", zarr_format=3
        )
    except FileNotFoundError:
        return []
    ome = group.attrs.get("ome")
    names = ome.get("labels", []) if isinstance(ome, dict) else []
    if not isinstance(names, list):
        return []
    storage = open_storage(target.store_url, read_only=True)
    out = []
    for name in names:
        path = f"{target.group_path}/labels/{name}"
        out.append(catalog.target_for(storage, path, catalog.load(storage, path)))
    return out


def _reader(target: ZarrTarget) -> ChunkReader:
    """The verifying reader of a result (its checked commit record, cached per process)."""
    return open_reader(open_storage(target.store_url, read_only=True), target.group_path)


def _omero(target: ZarrTarget, multiscale: dict[str, Any], top: np.ndarray) -> dict[str, Any]:
    """An ``omero`` rendering block: one channel per index of a ``c`` axis (else one).

    Each channel's window spans the type's range (the data's for floats) and starts and
    ends at the values of the smallest level, which is cheap to read.
    """
    axes = [a["name"] for a in multiscale["axes"]]
    dtype = top.dtype
    c = axes.index("c") if "c" in axes else None
    count = top.shape[c] if c is not None else 1
    channels = []
    for index in range(count):
        values = np.take(top, index, axis=c) if c is not None else top
        start = float(values.min()) if values.size else 0.0
        end = float(values.max()) if values.size else 0.0
        if dtype.kind == "b":
            low, high = 0.0, 1.0
        elif dtype.kind in "iu":
            low, high = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:
            low, high = start, end
        channels.append(
            {
                "label": f"{target.name} {index}" if c is not None else target.name,
                "color": _CHANNEL_COLORS[index % len(_CHANNEL_COLORS)] if count > 1 else "FFFFFF",
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {"min": low, "max": high, "start": start, "end": end},
            }
        )
    rdefs: dict[str, Any] = {"model": "color" if count > 1 else "greyscale", "defaultT": 0}
    if "z" in axes:
        rdefs["defaultZ"] = top.shape[axes.index("z")] // 2
    return {"name": target.name, "version": "0.4", "channels": channels, "rdefs": rdefs}


def _v2_compressor(compressor: str) -> Any:
    import numcodecs

    if compressor == "blosc":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if compressor == "zlib":
        return numcodecs.Zlib(level=6)
    raise InvalidArgumentError(
        f"Invalid compressor {compressor!r} for an NGFF 0.4 export: use 'blosc' (Blosc lz4, "
        "what bioformats2raw writes) or 'zlib' (pure Java readers without native Blosc)."
    )


def _copy_image(
    target: ZarrTarget, group: zarr.Group, compressor: Any, *, with_omero: bool
) -> dict[str, Any]:
    """Copy every level of ``target`` into ``group`` (zarr v2) and write its 0.4 attributes."""
    from cpr_zarr.core.pyramid import level_count, read_level

    ome = _ome(target)
    multiscale = dict(ome["multiscales"][0])
    datasets = multiscale["datasets"][: level_count(target)]
    level = None
    for number, dataset in enumerate(datasets):
        level = read_level(target, number)
        array = group.create_array(
            dataset["path"],
            shape=level.shape,
            dtype=level.dtype,
            chunks=tuple(max(1, c[0]) for c in level.chunks),
            compressors=compressor,
            chunk_key_encoding={"name": "v2", "separator": "/"},  # NGFF 0.4 asks for "/"
            fill_value=0,
        )
        for region, values in _slabs(level, max(1, level.chunks[0][0])):
            array[region] = values
    attrs: dict[str, Any] = {
        "multiscales": [{"version": "0.4", **{**multiscale, "datasets": datasets}}]
    }
    if "image-label" in ome:
        attrs["image-label"] = {"version": "0.4", **ome["image-label"]}
    elif with_omero and level is not None:
        attrs["omero"] = _omero(target, multiscale, np.asarray(level))
    group.attrs.update(attrs)
    return attrs


async def _keys(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


def _copy_node(source: Any, group: zarr.Group, out: Path, path: str, compressor: Any) -> None:
    """Copy the zarr v3 group at ``path`` into the zarr v2 ``group`` (written at ``out``).

    Attributes, sub-groups and arrays go through zarr (so they become zarr v2); other files
    (a table's ``table.parquet`` or ``table.csv``) are copied byte for byte. Nodes are found
    from the key listing: zarr's own member listing warns about the non-zarr files.
    """
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prefix = f"{path}/"
    keys = sorted(sync(_keys(source, prefix)))
    nodes = sorted(
        (key[len(prefix) : -len("zarr.json")].rstrip("/") for key in keys
         if key == f"{prefix}zarr.json" or key.endswith("/zarr.json")),
        key=lambda rel: rel.count("/"),
    )  # fmt: skip
    arrays: list[str] = []
    for rel in nodes:
        if any(rel.startswith(f"{a}/") for a in arrays):
            continue  # inside an array: not a node of the table
        node = zarr.open(source, path=f"{path}/{rel}" if rel else path, mode="r", zarr_format=3)
        parent = group
        for part in rel.split("/")[:-1]:
            parent = parent[part]  # type: ignore[assignment]
        if isinstance(node, zarr.Group):
            target = parent.create_group(rel.rsplit("/", 1)[-1]) if rel else group
            target.attrs.update(dict(node.attrs))
            continue
        arrays.append(rel)
        array = parent.create_array(
            rel.rsplit("/", 1)[-1],
            shape=node.shape,
            dtype=node.dtype,
            chunks=node.chunks,
            compressors=compressor,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        array.attrs.update(dict(node.attrs))
        if node.size:
            array[...] = node[...]  # table columns: small next to the images
    for key in keys:
        relative = key[len(prefix) :]
        if relative == "zarr.json" or relative.endswith("/zarr.json"):
            continue
        if any(relative.startswith(f"{a}/") for a in arrays):
            continue
        value = sync(source.get(key, prototype=default_buffer_prototype()))
        if value is not None:
            file = out / relative
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(value.to_bytes())


def _copy_tables(target: ZarrTarget, group: zarr.Group, out: Path, compressor: Any) -> list[str]:
    """Copy the image's ``tables`` group (Fractal/ngio layout: ``tables/<name>``, listed in
    its ``tables`` attribute, a feature table naming its label image by ``region.path``)."""
    import zarr

    source = target.zarr_array().store
    try:
        tables = zarr.open_group(
            source, path=f"{target.group_path}/tables", mode="r", zarr_format=3
        )
    except FileNotFoundError:
        return []
    names = tables.attrs.get("tables")
    if not isinstance(names, list) or not names:
        return []
    out_tables = group.create_group("tables")
    out_tables.attrs.update(dict(tables.attrs))
    copied = []
    for name in map(str, names):
        path = f"{target.group_path}/tables/{name}"
        try:
            zarr.open_group(source, path=path, mode="r", zarr_format=3)
        except FileNotFoundError:
            continue  # listed but never written: nothing to copy
        _copy_node(source, out_tables.create_group(name), out / "tables" / name, path, compressor)
        copied.append(name)
    return copied


def to_ngff_v04(
    target: ZarrTarget,
    path: str | os.PathLike[str],
    *,
    labels: bool = True,
    compressor: str = "blosc",
) -> Path:
    """Copy a result, with all its pyramid levels and label images, to an NGFF 0.4 image on zarr v2.

    For viewers that do not read zarr v3 yet (Fiji with MoBIE / n5-zarr, older napari and
    ome-zarr readers). The copy keeps the dataset paths (``0``, ``1``, ...), the axes,
    transforms, multiscales ``type`` and ``metadata``, adds an ``omero`` rendering block, and
    copies the label images to ``labels/<name>`` with their ``image-label`` (``labels=False``
    leaves them out) and the tables stored with the image (``tables/<name>``, the
    Fractal/ngio layout, e.g. written by ngio). ``compressor``: ``"blosc"`` (Blosc lz4,
    level 5, byte shuffle; the default of bioformats2raw, decoded by Java zarr v2 readers
    with native Blosc) or ``"zlib"`` (pure Java).

    Raises
    ------
    StoreError
        If ``path`` exists.
    UnsupportedResultError
        For tables and arrays that are not images.
    InvalidArgumentError
        For an unknown ``compressor``.
    """
    import zarr

    _metadata(target)  # rejects tables and arrays that are not images
    codec = _v2_compressor(compressor)
    out = Path(path)
    if out.exists():
        raise StoreError(
            f"Export destination {str(out)!r} already exists; choose a new path or remove it."
        )
    group = zarr.open_group(str(out), mode="w-", zarr_format=2)
    _copy_image(target, group, codec, with_omero=True)
    children = _label_targets(target) if labels else []
    if children:
        names = [child.group_path.rsplit("/", 1)[1] for child in children]
        label_group = group.create_group("labels")
        label_group.attrs.update({"labels": names})
        for name, child in zip(names, children, strict=True):
            _copy_image(child, label_group.create_group(name), codec, with_omero=False)
    _copy_tables(target, group, out, codec)
    return out
