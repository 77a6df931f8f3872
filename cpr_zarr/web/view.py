"""``cpr-zarr view``: results in neuroglancer, served from this machine.

neuroglancer's Python package ships its web client in the wheel and serves it, with the
viewer state, from a tornado server in a background thread. We add two routes to that same
server (one port, so one SSH forward is enough): ``/store/<key>`` serves the store's objects
with CORS, and ``/view?ref=...`` builds a viewer for the requested results and redirects the
browser to it. The layers' data URLs are made from the ``Host`` the browser used for that
request, so the viewer works through any port forwarding (``ssh -L 9000:localhost:8765``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from cpr_zarr.web.thumbnail import display_range, parent_image_path

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["ViewGroup", "Viewers", "label_paths", "plan_view"]

MAX_VIEWERS = 64
# what neuroglancer's zarr reader decodes; other types go through the viewer's own server
NEUROGLANCER_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"}
)
_CAST = {"bool": "uint8", "float64": "float32", "float16": "float32", "int64": "float32"}
MAX_SEGMENTS = 5000


@dataclass(frozen=True, slots=True)
class ViewGroup:
    """An image result and the label images shown over it (one panel of the view)."""

    image: ZarrTarget
    labels: tuple[ZarrTarget, ...]


def group_attrs(store: ResultStore, path: str) -> dict[str, Any]:
    """A group's attributes, read with plain zarr; empty if there is no such group."""
    try:
        group = zarr.open_group(store.url, path=path, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return {}
    attrs: dict[str, Any] = dict(group.attrs)
    return attrs


def label_paths(store: ResultStore, image_path: str) -> list[str]:
    """The label images of an image, from its NGFF ``labels`` group (plain zarr read)."""
    names = group_attrs(store, f"{image_path}/labels").get("ome", {}).get("labels", [])
    return [f"{image_path}/labels/{name}" for name in names]


# NGFF units neuroglancer knows by another name (it takes SI units with any prefix)
_UNITS = {
    "angstrom": ("m", 1e-10), "nanometer": ("m", 1e-9), "micrometer": ("m", 1e-6),
    "millimeter": ("m", 1e-3), "centimeter": ("m", 1e-2), "meter": ("m", 1.0),
    "kilometer": ("m", 1e3), "nanosecond": ("s", 1e-9), "microsecond": ("s", 1e-6),
    "millisecond": ("s", 1e-3), "second": ("s", 1.0), "minute": ("s", 60.0),
    "hour": ("s", 3600.0),
}  # fmt: skip


def coordinate_space(
    store: ResultStore, image_path: str
) -> tuple[list[str], list[str], list[float], list[str]]:
    """``(names, units, scales, space axis names)`` of an image's base level, in neuroglancer's
    terms, from its NGFF ``multiscales`` metadata (empty lists if it has none)."""
    try:
        ms = group_attrs(store, image_path)["ome"]["multiscales"][0]
        axes = ms["axes"]
        transforms = ms["datasets"][0]["coordinateTransformations"]
    except (KeyError, IndexError, TypeError):
        return [], [], [], []
    scale = next((t["scale"] for t in transforms if t.get("type") == "scale"), [1.0] * len(axes))
    names, units, scales = [], [], []
    for axis, factor in zip(axes, scale, strict=False):
        unit, multiplier = _UNITS.get(str(axis.get("unit", "")), ("", 1.0))
        names.append(str(axis["name"]))
        units.append(unit)
        scales.append(float(factor) * multiplier)
    space = [str(a["name"]) for a in axes if a.get("type") == "space"]
    return names, units, scales, space


def plan_view(store: ResultStore, refs: list[str]) -> list[ViewGroup]:
    """One panel per image among ``refs`` (a label image brings its image, an image all its
    label images); tables cannot be shown and raise ``ValueError`` naming them.

    Raises
    ------
    ValueError
        If a reference is a table.
    cpr_zarr.errors.CprZarrError
        As ``ResultStore.open``.
    """
    panels: dict[str, list[ZarrTarget]] = {}
    images: dict[str, ZarrTarget] = {}
    for ref in refs:
        target = store.open(ref)
        if target.dtype == "table":
            raise ValueError(
                f"Result {target.group_path!r} of store {store.url!r} is a table; neuroglancer "
                "shows images and label images. Open a table with `cpr-zarr serve` or "
                "cpr_zarr.read_table."
            )
        parent = parent_image_path(target.group_path)
        if parent is None:
            images.setdefault(target.group_path, target)
            chosen = panels.setdefault(target.group_path, [])
            for path in label_paths(store, target.group_path):
                if all(t.group_path != path for t in chosen):
                    chosen.append(store.open(path))
        else:
            images.setdefault(parent, store.open(parent))
            chosen = panels.setdefault(parent, [])
            if all(t.group_path != target.group_path for t in chosen):
                chosen.append(target)
    return [ViewGroup(images[p], tuple(labels)) for p, labels in panels.items()]


def _smallest_level(target: ZarrTarget) -> np.ndarray:
    from cpr_zarr import read_level
    from cpr_zarr.core.pyramid import level_count

    return np.asarray(read_level(target, level_count(target) - 1))


class _Blocks:
    """A lazy array that hands neuroglancer numpy blocks (it takes a memoryview of what it
    reads, which a Dask array does not give)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim

    def __getitem__(self, item: Any) -> np.ndarray:
        return np.asarray(self.data[item])


class Viewers:
    """neuroglancer viewers by (browser origin, results), the most recent ``MAX_VIEWERS``."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self._viewers: OrderedDict[tuple[str, tuple[str, ...]], Any] = OrderedDict()
        self._ranges: dict[str, tuple[float, float]] = {}
        self._segments: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _space(self, target: ZarrTarget) -> tuple[list[str], list[str], list[float]]:
        names, units, scales, _ = coordinate_space(self.store, target.group_path)
        return names, units, scales

    def _range(self, target: ZarrTarget) -> tuple[float, float]:
        if target.content_hash not in self._ranges:
            data = _smallest_level(target)
            if data.dtype.kind == "c":
                data = np.abs(data)
            self._ranges[target.content_hash] = display_range(data.astype(np.float64))
        return self._ranges[target.content_hash]

    def _segment_ids(self, target: ZarrTarget) -> list[int]:
        if target.content_hash not in self._segments:
            ids = np.unique(_smallest_level(target))
            self._segments[target.content_hash] = [int(i) for i in ids[ids != 0][:MAX_SEGMENTS]]
        return self._segments[target.content_hash]

    def _source(
        self,
        origin: str,
        target: ZarrTarget,
        names: list[str],
        units: list[str],
        scales: list[float],
    ) -> Any:
        """A layer source: the stored group over HTTP, or, for types neuroglancer's zarr
        reader cannot decode (bool masks, 64-bit numbers), the verified result cast to one
        it can, served chunk by chunk by neuroglancer's Python server (``python://``)."""
        import neuroglancer

        if target.dtype in NEUROGLANCER_DTYPES:
            return f"zarr3://{origin}/store/{target.group_path}/"
        cast = _CAST.get(target.dtype, "float32")
        data = target.get_data().astype(cast)
        space = neuroglancer.CoordinateSpace(
            names=names or [f"d{i}" for i in range(data.ndim)],
            units=units or [""] * data.ndim,
            scales=scales or [1.0] * data.ndim,
        )
        return neuroglancer.LocalVolume(data=_Blocks(data), dimensions=space)

    def viewer_path(self, origin: str, refs: list[str]) -> str:
        """The path (``/v/<token>/``) of a viewer showing ``refs``, created if needed.

        ``origin`` is the scheme, host and port the browser used (``http://localhost:9000``).
        """
        import neuroglancer

        groups = plan_view(self.store, refs)
        key = (
            origin,
            tuple(g.image.group_path for g in groups)
            + tuple(t.group_path for g in groups for t in g.labels),
        )
        with self._lock:
            viewer = self._viewers.get(key)
            if viewer is not None:
                self._viewers.move_to_end(key)
                return f"/v/{viewer.token}/"
        viewer = neuroglancer.Viewer()
        panels = []
        with viewer.txn() as state:
            for group in groups:
                names = [group.image.name]
                lo, hi = self._range(group.image)
                state.layers[group.image.name] = neuroglancer.ImageLayer(
                    source=self._source(origin, group.image, *self._space(group.image)),
                    shader_controls={"normalized": {"range": [lo, hi]}},
                )
                for label in group.labels:
                    name = f"{label.name} ({group.image.name})" if len(groups) > 1 else label.name
                    names.append(name)
                    state.layers[name] = neuroglancer.SegmentationLayer(
                        source=self._source(origin, label, *self._space(label)),
                        segments=self._segment_ids(label),
                    )
                panels.append(neuroglancer.LayerGroupViewer(layers=names, layout="xy"))
            # NGFF orders axes slowest first (z, y, x); neuroglancer shows its first display
            # dimension across the screen: x across, y down, z through the screen
            names, units, scales, space = coordinate_space(self.store, groups[0].image.group_path)
            if names:
                state.dimensions = neuroglancer.CoordinateSpace(
                    names=names, units=units, scales=scales
                )
                state.display_dimensions = space[::-1]
                # zoom so the first image fills a panel (~250 screen pixels): neuroglancer
                # counts zoom in units of the dimensions' scales, here voxels of the base
                shape = groups[0].image.shape
                extent = max(
                    (n for name, n in zip(names, shape, strict=False) if name in space[-2:]),
                    default=1,
                )
                state.cross_section_scale = max(extent / 250.0, 1e-3)
                state.projection_scale = max(shape[names.index(a)] for a in space) * 1.5
            if len(groups) > 1:  # several results side by side, one panel each
                state.layout = neuroglancer.row_layout(panels)
            else:
                state.layout = "4panel"
        with self._lock:
            self._viewers[key] = viewer
            while len(self._viewers) > MAX_VIEWERS:
                self._viewers.popitem(last=False)
        return f"/v/{viewer.token}/"
