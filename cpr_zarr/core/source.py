"""Image sources as task inputs: an existing OME-Zarr image, or a TIFF read lazily.

A source is a small frozen value (it pickles and travels through Dask as a few bytes). Its
cache key (``CONTENT_INPUTS``) comes from file metadata only: size and modification time of
the TIFF; for OME-Zarr, the array metadata document and the size and time (or ETag) of every
chunk of the chosen level, from one listing. No pixel is read to compute it. In a
``cpr_zarr.task`` it arrives as a lazy Dask array (numpy if annotated ``numpy.ndarray``), and
outputs of its shape inherit its axes, pixel size and units.
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np

from cpr_zarr.errors import StoreError
from cpr_zarr.model.ngff import ImageMeta, default_axes, parse_meta

if TYPE_CHECKING:
    import zarr

__all__ = ["TiffSource", "ZarrSource"]

_IMAGEJ_UNITS = {"um": "micrometer", "µm": "micrometer", "micron": "micrometer",
                 "nm": "nanometer", "mm": "millimeter", "m": "meter"}  # fmt: skip
_OME_UNITS = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter",
              "m": "meter", "Å": "angstrom"}  # fmt: skip


def _region(region: Any) -> tuple[slice, ...] | None:
    if region is None:
        return None
    if isinstance(region, slice):
        return (region,)
    return tuple(r if isinstance(r, slice) else slice(*r) for r in region)


def _to_meta(axes: str, ndim: int, scale: dict[str, float], units: dict[str, str]) -> ImageMeta:
    axes = axes.lower()
    if len(axes) != ndim or not set(axes) <= set("tczyx"):
        axes = default_axes(ndim) or ""
    if not axes:
        return parse_meta(ndim)
    return parse_meta(
        ndim,
        axes=axes,
        scale=[scale.get(a, 1.0) for a in axes],
        units=[units.get(a) for a in axes],
    )


class _Source:
    """What both sources share: a lazy, optionally cropped Dask array of one zarr array."""

    region: tuple[Any, ...] | None

    def _array(self) -> Any:
        raise NotImplementedError

    def get_data(self) -> da.Array:
        data = da.from_zarr(self._array())
        region = _region(self.region)
        out: da.Array = data[region] if region is not None else data
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.get_data().shape)


@dataclass(frozen=True)
class TiffSource(_Source):
    """A TIFF file (or OME-TIFF / ImageJ hyperstack) read lazily through tifffile's zarr store.

    Parameters
    ----------
    path
        The file.
    series, level
        Which image series and pyramid level (OME-TIFF) to read.
    region
        Optional crop: a tuple of slices (or ``(start, stop)`` pairs) per axis.
    """

    path: str
    series: int = 0
    level: int = 0
    region: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        resolved = Path(self.path).expanduser().resolve()
        if not resolved.is_file():
            raise FileNotFoundError(f"TiffSource: no file at {str(resolved)!r}.")
        object.__setattr__(self, "path", str(resolved))

    def fingerprint(self) -> dict[str, Any]:
        stat = os.stat(self.path)
        return {
            "tiff": self.path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "series": self.series, "level": self.level, "region": repr(_region(self.region)),
        }  # fmt: skip

    def _array(self) -> Any:
        import tifffile
        import zarr

        store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
        array: Any = zarr.open_array(store, mode="r")
        return array

    def image_meta(self) -> ImageMeta:
        """Axes, pixel size and units from OME-XML or ImageJ metadata, when the file has them."""
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[self.series]
            axes = series.axes.replace("S", "C").replace("Q", "Z").replace("I", "Z")
            scale: dict[str, float] = {}
            units: dict[str, str] = {}
            ome_xml: Any = tif.ome_metadata
            if tif.is_ome and ome_xml:
                root = ET.fromstring(ome_xml)
                pixels = [e for e in root.iter() if e.tag.endswith("Pixels")][self.series]
                for axis in "xyz":
                    size = pixels.attrib.get(f"PhysicalSize{axis.upper()}")
                    if size is not None:
                        scale[axis] = float(size)
                        unit = pixels.attrib.get(f"PhysicalSize{axis.upper()}Unit", "µm")
                        units[axis] = _OME_UNITS.get(unit, "micrometer")
            elif tif.imagej_metadata is not None:
                page: Any = series.pages[0]
                ij = tif.imagej_metadata
                ij_unit = _IMAGEJ_UNITS.get(str(ij.get("unit", "")).lower())
                for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
                    res = page.tags.get(tag) if page is not None else None
                    if res is not None and res.value[0]:
                        scale[axis] = res.value[1] / res.value[0]
                if "spacing" in ij:
                    scale["z"] = float(ij["spacing"])
                if ij_unit:
                    units.update(dict.fromkeys("xyz", ij_unit))
        shape = self.shape
        meta = _to_meta(axes, len(series.shape), scale, units)
        if len(shape) != len(meta.axes):  # pragma: no cover - region keeps ndim
            return parse_meta(len(shape))
        return meta


@dataclass(frozen=True)
class ZarrSource(_Source):
    """An existing OME-Zarr image (zarr v2 or v3): one pyramid level, optionally cropped.

    Parameters
    ----------
    url
        The image group: a folder path or fsspec URL.
    level
        Index into the image's multiscales datasets (0 = full resolution).
    region
        Optional crop: a tuple of slices (or ``(start, stop)`` pairs) per axis.
    """

    url: str
    level: int = 0
    region: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if "://" not in self.url:
            object.__setattr__(self, "url", str(Path(self.url).expanduser().resolve()))

    def _group(self) -> zarr.Group:
        import zarr

        try:
            return zarr.open_group(self.url, mode="r")
        except Exception as exc:
            raise StoreError(
                f"ZarrSource: cannot open an OME-Zarr image group at {self.url!r}: {exc}"
            ) from exc

    def _multiscale(self) -> tuple[zarr.Group, dict[str, Any]]:
        group = self._group()
        attrs: dict[str, Any] = dict(group.attrs)
        multiscales: Any = attrs.get("ome", attrs).get("multiscales")
        if not multiscales:
            raise StoreError(
                f"ZarrSource: {self.url!r} has no OME-NGFF 'multiscales' metadata; point it at "
                "an image group (the folder holding the levels 0/, 1/ ... or s0/, s1/ ...)."
            )
        datasets = multiscales[0]["datasets"]
        if not 0 <= self.level < len(datasets):
            raise IndexError(
                f"ZarrSource: level {self.level} requested, {self.url!r} has {len(datasets)}."
            )
        return group, multiscales[0]

    def _array(self) -> Any:
        group, multiscale = self._multiscale()
        array: Any = group[multiscale["datasets"][self.level]["path"]]
        return array

    def fingerprint(self) -> dict[str, Any]:
        """Array metadata plus size and time/ETag of every chunk object, from one listing."""
        import fsspec

        array = self._array()
        fs, root = fsspec.url_to_fs(self.url)
        level_path = f"{root.rstrip('/')}/{array.basename}"
        listing = fs.find(level_path, detail=True)
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps(array.metadata.to_dict(), sort_keys=True, default=str).encode())
        for key in sorted(listing):
            info = listing[key]
            stamp = (
                info.get("ETag")
                or info.get("mtime")
                or info.get("LastModified")
                or info.get("created")
            )
            h.update(f"{key}:{info.get('size')}:{stamp}".encode())
        return {"ome_zarr": self.url, "level": self.level, "region": repr(_region(self.region)),
                "listing": h.hexdigest()}  # fmt: skip

    def image_meta(self) -> ImageMeta:
        _, multiscale = self._multiscale()
        axes = "".join(a["name"] for a in multiscale["axes"])
        transforms = multiscale["datasets"][self.level]["coordinateTransformations"]
        scale_list = next((t["scale"] for t in transforms if t["type"] == "scale"), None)
        scale = dict(zip(axes, scale_list or [1.0] * len(axes), strict=True))
        units = {a["name"]: a["unit"] for a in multiscale["axes"] if a.get("unit")}
        return _to_meta(axes, len(multiscale["axes"]), scale, units)


def to_array(source: TiffSource | ZarrSource, as_numpy: bool) -> Any:
    """What a task receives for a source argument."""
    data = source.get_data()
    if as_numpy:
        from cpr_zarr.core.compute import compute

        (out,) = compute(data)
        return np.asarray(out)
    return data
