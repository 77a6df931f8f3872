"""Small pictures of stored results: a projection of the smallest pyramid level, as PNG.

A preview never reads a big base level: it reads the smallest level a result has (the
pyramid's last) and, when even that level is larger than :data:`MAX_READ_BYTES`, only the
middle plane of each axis before ``y, x`` (the chunks crossing that plane). Images are shown
as the maximum-intensity projection over their leading axes, contrast-stretched; label
images (integer results under an image's ``labels/``) in a fixed colour per label value.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cpr_zarr.target import ZarrTarget

__all__ = ["MAX_READ_BYTES", "is_label_image", "label_colors", "preview_png", "preview_rgb"]

# the most a preview reads (decoded): larger smallest levels are cut to their middle plane
MAX_READ_BYTES = 64 * 2**20
_GOLDEN = 0.618033988749895


def is_label_image(target: ZarrTarget) -> bool:
    """Whether ``target`` is a label image (saved with ``cpr_zarr.Labels``)."""
    return "/labels/" in target.group_path and np.dtype(target.dtype).kind in "iu"


def label_colors(values: np.ndarray) -> np.ndarray:
    """A fixed, well-spread RGB colour per label value (``uint8``, shape ``values.shape + (3,)``);
    label 0 (background) is black. The same value always gets the same colour."""
    hue = (values.astype(np.float64) * _GOLDEN) % 1.0
    # HSV -> RGB with full saturation and value, vectorised
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    frac = h6 - np.floor(h6)
    q, t = 1.0 - frac, frac
    one, zero = np.ones_like(hue), np.zeros_like(hue)
    r = np.choose(sector, [one, q, zero, zero, t, one])
    g = np.choose(sector, [t, one, one, q, zero, zero])
    b = np.choose(sector, [zero, zero, t, one, one, q])
    rgb = (np.stack([r, g, b], axis=-1) * 215 + 40).astype(np.uint8)
    rgb[values == 0] = 0
    return rgb


def _plane_axes(target: ZarrTarget) -> tuple[int, int] | None:
    """The (y, x) axes of a result: named ones if it has NGFF metadata, else the last two."""
    ndim = len(target.shape)
    if ndim < 2:  # no plane: decided without opening the result (a tiny task's artifacts)
        return None
    image = target.store.reader(target).record.image
    axes = "".join(image.axes) if image is not None else None
    if isinstance(axes, str) and "y" in axes and "x" in axes:
        return axes.index("y"), axes.index("x")
    return ndim - 2, ndim - 1


def _pixel_aspect(target: ZarrTarget, yx: tuple[int, int]) -> float:
    """Physical height / width of a pixel (1 without metadata), so previews are not squashed."""
    image = target.store.reader(target).record.image
    scale = image.scale if image is not None else None
    if not scale:
        return 1.0
    sy, sx = float(scale[yx[0]]), float(scale[yx[1]])
    return sy / sx if sx > 0 and sy > 0 else 1.0


def _smallest_level(target: ZarrTarget) -> Any:
    from cpr_zarr.core.pyramid import level_count, read_level

    return read_level(target, level_count(target) - 1)


def _projection(target: ZarrTarget, yx: tuple[int, int]) -> np.ndarray:
    """The 2-D (y, x) max projection of the smallest level, reading at most its middle planes."""
    level = _smallest_level(target)
    if level.nbytes > MAX_READ_BYTES:
        # only the chunks crossing the middle of every other axis are read
        index = tuple(slice(None) if i in yx else s // 2 for i, s in enumerate(level.shape))
        plane = np.asarray(level[index])
        return plane if yx[0] < yx[1] else plane.T
    data = np.asarray(level)
    other = tuple(i for i in range(data.ndim) if i not in yx)
    projected = data.max(axis=other) if other else data
    return projected if yx[0] < yx[1] else projected.T


def _stretch(plane: np.ndarray) -> np.ndarray:
    """Grey levels 0-255 between the 0.5th and 99.8th percentiles of the finite values."""
    values = plane.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(plane.shape, np.uint8)
    low, high = np.percentile(finite, [0.5, 99.8])
    if high <= low:
        high = finite.max()
        low = finite.min()
    if high <= low:
        return np.full(plane.shape, 128 if high else 0, np.uint8)
    scaled = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)
    grey: np.ndarray = (scaled * 255).astype(np.uint8)
    return grey


def preview_rgb(target: ZarrTarget) -> np.ndarray | None:
    """The preview of an array result as an ``(h, w, 3)`` ``uint8`` array at the smallest
    level's resolution, or None for results without a plane (tables, 1-D arrays)."""
    if target.dtype == "table":
        return None
    yx = _plane_axes(target)
    if yx is None:
        return None
    plane = _projection(target, yx)
    if np.dtype(target.dtype).kind == "c":
        plane = np.abs(plane)
    if is_label_image(target):
        return label_colors(plane)
    grey = _stretch(plane if plane.dtype != bool else plane.astype(np.uint8))
    return np.repeat(grey[..., None], 3, axis=-1)


def preview_png(target: ZarrTarget, size: int = 256) -> bytes | None:
    """A PNG preview of an array result, its longer side ``size`` pixels (see module doc).

    Returns None for results without a plane (tables, 1-D arrays).
    """
    from PIL import Image

    rgb = preview_rgb(target)
    if rgb is None:
        return None
    yx = _plane_axes(target)
    aspect = _pixel_aspect(target, yx) if yx is not None else 1.0
    height, width = rgb.shape[0] * aspect, float(rgb.shape[1])
    factor = size / max(height, width)
    new = (max(1, math.floor(width * factor + 0.5)), max(1, math.floor(height * factor + 0.5)))
    labels = is_label_image(target)
    image = Image.fromarray(rgb, mode="RGB")
    if not labels:  # grey: one channel, a third of the PNG's size
        image = image.convert("L")
    image = image.resize(new, Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
