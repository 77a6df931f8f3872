"""OME-NGFF 0.5 metadata for result groups (pure)."""

from __future__ import annotations

from typing import Any

__all__ = ["NGFF_VERSION", "default_axes", "multiscales_attrs"]

NGFF_VERSION = "0.5"
_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
_AXIS_TYPES = {"t": "time", "c": "channel"}


def default_axes(ndim: int) -> str | None:
    """Axis names NGFF viewers expect for an ``ndim`` array, or None when NGFF has none (1-D, >5-D)."""
    return _DEFAULT_AXES.get(ndim)


def multiscales_attrs(name: str, ndim: int, dataset_path: str = "0") -> dict[str, Any] | None:
    """The ``ome`` attribute of a single-level image group, or None if NGFF cannot describe it."""
    axes = default_axes(ndim)
    if axes is None:
        return None
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [{"name": a, "type": _AXIS_TYPES.get(a, "space")} for a in axes],
                "datasets": [
                    {
                        "path": dataset_path,
                        "coordinateTransformations": [{"type": "scale", "scale": [1.0] * ndim}],
                    }
                ],
            }
        ],
    }
