"""Viewer layers of stored results, and the napari reader of a whole store.

napari finds :func:`napari_get_reader` through the npe2 manifest ``cpr_zarr/napari.yaml``
(entry point ``napari.manifest``). Opening a store root (``napari results.zarr``, or
``cpr-zarr open results.zarr``) shows its most recent image results, the newest one of each
result name, with their label images as labels layers; opening a result group inside a store
(``results.zarr/denoise-3f2a...``) shows that result. Every layer is multiscale when the
result has pyramid levels (napari then reads only the level it draws), at the result's
physical scale and translation, with its units and axis names.

Nothing here imports napari: the reader returns napari's layer data tuples
``(data, kwargs, layer_type)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["MAX_LAYERS", "layer_data", "napari_get_reader", "recent_images", "store_layers"]

# images a store root opens as (the newest one per result name); labels come on top
MAX_LAYERS = 8
LayerData = tuple[Any, dict[str, Any], str]


def _is_label(target: ZarrTarget) -> bool:
    return "/labels/" in target.group_path


def _napari_supports_units() -> bool:
    """``units`` and ``axis_labels`` layer arguments exist from napari 0.6 on."""
    try:
        from importlib.metadata import version

        major, minor = (int(p) for p in version("napari").split(".")[:2])
    except Exception:  # napari not installed: the tuples are for napari >= 0.6
        return True
    return (major, minor) >= (0, 6)


def layer_data(target: ZarrTarget, *, layer_type: str | None = None) -> LayerData:
    """One layer data tuple of an array result: all its levels, its scale and translation.

    ``layer_type`` is ``"labels"`` for label images and ``"image"`` otherwise, unless given.
    """
    from cpr_zarr.core.pyramid import level_count, read_level

    attrs = target.store.reader(target).attrs
    levels = [read_level(target, i) for i in range(level_count(target))]
    kind = layer_type or ("labels" if _is_label(target) else "image")
    kwargs: dict[str, Any] = {
        "name": f"{target.name} {target.content_hash[:8]}",
        "metadata": {
            "cpr_zarr": {
                "store_url": target.store_url,
                "group_path": target.group_path,
                "content_hash": target.content_hash,
            }
        },
    }
    image = attrs.get("image")
    if image:
        axes: list[str] = list(image["axes"])
        scale = [float(s) for s in image["scale"]]
        translate = [float(t) for t in image["translation"]]
        units = [u or "pixel" for u in image["units"]]
        if kind == "image" and "c" in axes and len(levels[0].shape) > 2:
            channel = axes.index("c")
            kwargs["channel_axis"] = channel
            for values in (scale, translate, units, axes):
                del values[channel]
        kwargs["scale"] = scale
        kwargs["translate"] = translate
        if _napari_supports_units():
            kwargs["units"] = units
            kwargs["axis_labels"] = axes
    if len(levels) > 1:
        kwargs["multiscale"] = True
        data: Any = levels
    else:
        data = levels[0]
    if kind == "labels":
        kwargs["opacity"] = 0.6
    return data, kwargs, kind


def recent_images(store: ResultStore, limit: int = MAX_LAYERS) -> list[ZarrTarget]:
    """The newest array result of each name (no label images, no 1-D arrays), newest last."""
    frame = store.list()
    frame = frame[(frame["kind"] != "table") & ~frame["group_path"].str.contains("/labels/")]
    frame = frame[[len(shape) >= 2 for shape in frame["shape"]]]
    frame = frame.sort_values(["last_produced", "group_path"], na_position="first")
    newest = frame.drop_duplicates("name", keep="last").tail(limit)
    return [store.open(path) for path in newest["group_path"]]


def store_layers(
    store: ResultStore, targets: Iterable[ZarrTarget] | None = None
) -> list[LayerData]:
    """Layer data tuples of ``targets`` (default: :func:`recent_images`), each image followed
    by its label images. Tables and 1-D results are skipped."""
    chosen = list(targets) if targets is not None else recent_images(store)
    everything = list(store.targets())
    layers: list[LayerData] = []
    seen: set[str] = set()
    for target in chosen:
        if target.dtype == "table" or len(target.shape) < 2 or target.group_path in seen:
            continue
        seen.add(target.group_path)
        layers.append(layer_data(target))
        prefix = f"{target.group_path}/labels/"
        for label in everything:
            if label.group_path.startswith(prefix) and label.group_path not in seen:
                seen.add(label.group_path)
                layers.append(layer_data(label, layer_type="labels"))
    return layers


# -- the napari reader -------------------------------------------------------------------


def _is_store_root(path: Path) -> bool:
    """Whether ``path`` holds a cpr_zarr store root document (read through its typed record)."""
    from cpr_zarr.errors import CprZarrError
    from cpr_zarr.model.records import StoreRoot

    try:
        doc = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = doc.get("attributes", {}).get("cpr_zarr") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        return False
    try:
        StoreRoot.from_dict(attrs)
    except (CprZarrError, ValueError, TypeError):
        return False  # a result group's record, or something that is not ours
    return True


def _locate(path: str) -> tuple[Path, str | None] | None:
    """(store root, result group or None) of a path napari was given, or None if not ours."""
    from cpr_zarr.model.layout import parse_group_path

    given = Path(os.fspath(path)).expanduser()
    if _is_store_root(given):
        return given, None
    # a result group (or a label image inside one) somewhere below a store root
    for parent in given.parents:
        if _is_store_root(parent):
            group = given.relative_to(parent).as_posix()
            if parse_group_path(group.rsplit("/", 1)[-1]) is None:
                return None
            return parent, group
    return None


def read_path(path: str | list[str]) -> list[LayerData]:
    """Layers of a store root, or of one result group inside a store (module doc)."""
    from cpr_zarr.store import ResultStore

    layers: list[LayerData] = []
    for one in [path] if isinstance(path, str) else path:
        found = _locate(one)
        if found is None:
            continue
        root, group = found
        store = ResultStore(root, mode="r")
        layers.extend(store_layers(store, None if group is None else [store.open(group)]))
    return layers


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """napari's reader hook: :func:`read_path` if ``path`` is a store root or a result in
    one, else None (another reader is tried)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or any(_locate(p) is None for p in paths):
        return None
    return read_path
