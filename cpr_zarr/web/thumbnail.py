"""Thumbnails: a max-intensity projection of a result's smallest pyramid level, as a PNG.

Only the smallest level is read (``cpr_zarr.read_level``), so a thumbnail of a big volume
costs a few MB of reads, never the base level. Label images are coloured and drawn over
their image. Results never change (the content hash is their identity), so a thumbnail is
computed once and cached on disk under a key made of the content hashes it shows.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "ThumbnailCache",
    "default_cache_dir",
    "encode_png",
    "label_colors",
    "parent_image_path",
    "projection",
    "render_thumbnail",
]

# bump when the pictures change, so cached files of an older look are not served
THUMBNAIL_VERSION = 1
MAX_SIDE = 256


def default_cache_dir() -> Path:
    """``$CPR_ZARR_CACHE`` or ``$XDG_CACHE_HOME/cpr_zarr`` (default ``~/.cache/cpr_zarr``)."""
    explicit = os.environ.get("CPR_ZARR_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "cpr_zarr"


def encode_png(pixels: np.ndarray) -> bytes:
    """A PNG of a ``(h, w)`` grey or ``(h, w, 3)`` RGB uint8 array (zlib, no dependency)."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(
            f"encode_png takes a 2-D or (h, w, 3) uint8 array, got {pixels.dtype}{pixels.shape}"
        )
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def parent_image_path(group_path: str) -> str | None:
    """The image a label image belongs to (``<image>/labels/<label>``), else None."""
    head, sep, _ = group_path.rpartition("/labels/")
    return head if sep else None


def projection(target: ZarrTarget, *, reduce: str = "max") -> np.ndarray:
    """The smallest level of a result, projected to its last two axes (max, or nearest-z for
    labels via ``reduce="max"`` too: the largest label id along the line of sight)."""
    from cpr_zarr import read_level
    from cpr_zarr.core.pyramid import level_count

    level = level_count(target) - 1
    data = np.asarray(read_level(target, level))
    if data.ndim < 2:
        data = data.reshape(1, -1)
    if data.size == 0:  # a zero-size result: one black pixel
        return np.zeros((1, 1), dtype=data.dtype)
    while data.ndim > 2:
        data = data.max(axis=0)
    return data


def _shrink(plane: np.ndarray) -> np.ndarray:
    step = max(1, -(-max(plane.shape) // MAX_SIDE))
    return plane[::step, ::step]


def display_range(values: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile range of finite values (a constant image: its value +- 1)."""
    finite = values[np.isfinite(values)] if values.dtype.kind in "fc" else values
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite.astype(np.float64), [0.5, 99.5]))
    if hi <= lo:
        lo, hi = lo - 1.0, lo + 1.0
    return lo, hi


def _grey(plane: np.ndarray) -> np.ndarray:
    if plane.dtype.kind == "c":
        plane = np.abs(plane)
    values = plane.astype(np.float64)
    lo, hi = display_range(values)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return (scaled * 255.0 + 0.5).astype(np.uint8)


def label_colors(ids: np.ndarray) -> np.ndarray:
    """A stable, well separated RGB colour per label id (golden-ratio hues), ``(..., 3)``."""
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    saturation, value = 0.85, 1.0
    # HSV to RGB: channel n in (r, g, b) = V - V S clip(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    rgb = value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def render_thumbnail(store: ResultStore, target: ZarrTarget) -> bytes:
    """The PNG thumbnail of an array result; a label image drawn over its image."""
    plane = _shrink(projection(target))
    parent = parent_image_path(target.group_path)
    if parent is None or plane.dtype.kind not in "iu":
        return encode_png(_grey(plane))
    image = _shrink(projection(store.open(parent)))
    if image.shape != plane.shape:  # different pyramid depth: sample the label plane to fit
        rows = np.linspace(0, plane.shape[0] - 1, image.shape[0]).round().astype(int)
        cols = np.linspace(0, plane.shape[1] - 1, image.shape[1]).round().astype(int)
        plane = plane[np.ix_(rows, cols)]
    grey = _grey(image)[..., None].astype(np.float64)
    rgb = np.repeat(grey, 3, axis=-1)
    inside = plane != 0
    rgb[inside] = 0.45 * rgb[inside] + 0.55 * label_colors(plane[inside])
    return encode_png((rgb + 0.5).astype(np.uint8))


class ThumbnailCache:
    """PNG thumbnails on disk, computed on first request.

    The file name is a digest of the content hashes shown (a label image and its image), the
    store-independent identity of the picture; files are written to a temporary name and
    renamed, so concurrent requests never see half a file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path_for(self, target: ZarrTarget) -> Path:
        parts = [str(THUMBNAIL_VERSION), target.group_path.rsplit("/", 1)[-1]]
        parent = parent_image_path(target.group_path)
        if parent is not None:
            parts.append(parent)
        key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
        return self.folder / "thumbnails" / key[:2] / f"{key}.png"

    def get(self, store: ResultStore, target: ZarrTarget) -> bytes:
        path = self.path_for(target)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        png = render_thumbnail(store, target)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(png)
        os.replace(tmp, path)
        return png
