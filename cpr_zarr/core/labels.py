"""The NGFF side of a save: metadata, levels and the label images of an image."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.core import catalog
from cpr_zarr.core.reader import open_reader
from cpr_zarr.errors import InvalidArgumentError, InvalidArgumentTypeError
from cpr_zarr.model.ngff import (
    Image,
    ImageMeta,
    Labels,
    default_axes,
    default_colors,
    image_label_attrs,
    labels_group_attrs,
    metadata_conflict,
    multiscales_attrs,
    parse_colors,
    parse_levels,
    parse_meta,
)

if TYPE_CHECKING:
    from cpr_zarr.core.pyramid import LevelPlan
    from cpr_zarr.model.records import ArrayRecord, LevelRecord
    from cpr_zarr.storage import Storage
    from cpr_zarr.target import ZarrTarget

__all__ = ["SaveSpec", "resolve_save", "update_labels_list"]

logger = logging.getLogger("cpr_zarr")

# -- the NGFF side of a save (used by cpr_zarr.core.writer) -----------------------------------

_LABEL_KINDS = "iu"
_LABELS_DIR = "labels"


@dataclass(frozen=True)
class SaveSpec:
    """What a save writes besides the base array: metadata, levels, label attachment."""

    meta: ImageMeta | None
    levels: int | None = None
    explicit: bool = False
    label_of: str | None = None
    steps: tuple[tuple[int, ...], ...] | None = None
    colors: tuple[tuple[int, tuple[int, int, int, int]], ...] | None = None

    @property
    def dimension_names(self) -> list[str] | None:
        return list(self.meta.axes) if self.meta is not None else None

    def path(self, name: str, content_hash: str) -> str:
        """The group path: ``<name>-<hash>``, inside the image's ``labels`` for label images."""
        from cpr_zarr.model.layout import group_path

        path = group_path(name, content_hash)
        return path if self.label_of is None else f"{self.label_of}/{_LABELS_DIR}/{path}"

    def find(self, storage: Storage, content_hash: str, path: str) -> ZarrTarget | None:
        """An existing committed result for this save, warning if its metadata differs."""
        if self.label_of is not None:
            attrs = catalog.committed(storage, path)
            if attrs is None:
                return None
            update_labels_list(storage, self.label_of)  # a crash may have left it unlisted
            return catalog.target_for(storage, path, attrs)
        found = catalog.find(storage, content_hash, preferred=path)
        if found is not None and self.explicit:
            record = catalog.committed(storage, found.group_path)
            existing = getattr(record, "image", None)  # tables and plain arrays have none
            conflict = metadata_conflict(existing, self.meta)
            if conflict is not None:
                logger.warning(
                    "Result %s in store %s already holds these values, %s; returning it "
                    "unchanged (metadata does not change the content hash: the first save "
                    "wins). To store it with the new metadata, delete it first.",
                    found.group_path,
                    storage.url,
                    conflict,
                )
        return found

    def level_plans(
        self, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype
    ) -> list[LevelPlan]:
        """How each pyramid level of this save is made (none without image metadata)."""
        from cpr_zarr.core import pyramid

        if self.meta is None:
            return []
        if self.steps is not None:
            steps = list(self.steps)
        else:
            steps = pyramid.plan_levels(shape, self.meta, self.levels)
        method = "nearest" if self.label_of is not None or dtype == np.bool_ else "mean"
        return pyramid.plan_pyramid(shape, chunks, steps, method)

    def group_attributes(
        self,
        storage: Storage,
        path: str,
        record: ArrayRecord,
        *,
        base: np.ndarray | None = None,
        made: list[LevelRecord] | None = None,
    ) -> tuple[dict[str, Any] | None, ArrayRecord]:
        """Write the pyramid levels (unless ``made``: made in the same pass as the base);
        return the ``ome`` attribute and the record completed with the image metadata, the
        levels and the image a label image belongs to."""
        from cpr_zarr.core import pyramid

        name = record.name
        if self.meta is None:
            return None, record
        label = self.label_of is not None
        doc = storage.get_json(f"{path}/0/zarr.json") or {}
        shape = tuple(doc.get("shape", ()))
        method = "nearest" if label or doc.get("data_type") == "bool" else "mean"
        if made is not None:
            records = made
        else:
            if self.steps is not None:
                steps = list(self.steps)
            else:
                steps = pyramid.plan_levels(shape, self.meta, self.levels)
            records = pyramid.write_levels(
                storage, path, steps, method, list(self.meta.axes), base=base
            )
        levels = [("0", (1,) * len(shape))]
        cumulative = (1,) * len(shape)
        for level in records:
            cumulative = tuple(c * s for c, s in zip(cumulative, level.step, strict=True))
            levels.append((level.path, cumulative))
        ome = multiscales_attrs(name, self.meta, levels, centered=method == "mean")
        if label:
            colors = self.colors
            if colors is None:  # the strict label schema asks for a colour table
                colors = default_colors(_max_label(storage, path, base))
            ome["image-label"] = image_label_attrs(colors)
        record = replace(record, image=self.meta, levels=tuple(records), labels_of=self.label_of)
        return ome, record

    def after_commit(self, storage: Storage) -> None:
        if self.label_of is not None:
            update_labels_list(storage, self.label_of)


def _max_label(storage: Storage, path: str, base: np.ndarray | None) -> int:
    """The largest value of the label image being saved (0 if empty).

    From the in-memory array when the save had one, else from the stored base level, one
    chunk per job on a thread per core (the same read the pyramid levels make).
    """
    import zarr

    from cpr_zarr.core.codec import ChunkCodec, thread_map, worker_count
    from cpr_zarr.model.layout import chunk_grid

    if base is not None:
        return int(base.max()) if base.size else 0
    # pyramid.write_levels opens the staged base level the same way (before the commit)
    codec = ChunkCodec(
        zarr.open_array(storage.zarr_store, path=f"{path}/0", mode="r", zarr_format=3)
    )
    grid = [index for index, _ in chunk_grid(codec.shape, codec.chunks)]
    if not grid:
        return 0
    highest = thread_map(
        lambda index: int(codec.read(index, writeable=False).max()),
        grid,
        worker_count(remote=storage.remote),
    )
    return int(max(highest))


def update_labels_list(storage: Storage, image_path: str) -> None:
    """Make ``<image>/labels/zarr.json`` list every committed label group of the image.

    Each writer lists after committing its own label group, writes the sorted list, and
    re-lists until what it wrote matches what it sees: with concurrent writers of different
    labels the last write is made after every label it must list was committed, so none is
    lost. The document is a pure function of the committed labels, so identical states give
    identical bytes. It is a viewer index only: ``labels_of`` in each label group records
    the attachment authoritatively.
    """
    from cpr_zarr.model.layout import parse_group_path

    key = f"{image_path}/{_LABELS_DIR}/zarr.json"
    for _ in range(10):
        names = [
            entry
            for entry in storage.list_dir(f"{image_path}/{_LABELS_DIR}")
            if parse_group_path(entry) is not None
            and catalog.committed(storage, f"{image_path}/{_LABELS_DIR}/{entry}") is not None
        ]
        doc = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": labels_group_attrs(names)},
        }
        if storage.get_json(key) == doc:
            return
        storage.set_json(key, doc)


def resolve_save(
    storage: Storage,
    data: Any,
    *,
    axes: object = None,
    scale: object = None,
    units: object = None,
    translation: object = None,
    levels: object = None,
) -> tuple[Any, SaveSpec]:
    """Unwrap :class:`Image` / :class:`Labels` and validate metadata for a save.

    Raises
    ------
    InvalidArgumentError
        For invalid metadata, or labels that do not fit their image (a ``ValueError``; its
        subclass ``InvalidArgumentTypeError`` is also a ``TypeError``).
    """
    import dask.array as da

    from cpr_zarr.errors import UnsupportedResultError
    from cpr_zarr.target import ZarrTarget

    if isinstance(data, Labels):
        image = data.image
        given = {
            k: v
            for k, v in {
                "axes": axes,
                "scale": scale,
                "units": units,
                "translation": translation,
                "levels": levels,
            }.items()
            if v is not None
        }
        if given:
            raise InvalidArgumentError(
                f"Labels take their image's axes, scale, units, translation and pyramid levels; "
                f"got {given!r} too. Save them without these arguments (to change them, save "
                "the image with them first)."
            )
        if not isinstance(image, ZarrTarget):
            raise InvalidArgumentTypeError(
                f"Labels(image=...) must be the image result (a ZarrTarget), got "
                f"{type(image).__name__}. Inside a cpr_zarr.task pass the input array the task "
                "received for the image."
            )
        if image.store_url != storage.url:
            raise InvalidArgumentError(
                f"Labels are stored inside their image's group, but image {image.group_path!r} "
                f"is in store {image.store_url!r}, not {storage.url!r}. Save them to that store."
            )
        array = data.data
        if not isinstance(array, (np.ndarray, da.Array)):
            raise UnsupportedResultError(
                f"Labels(data=...) must be a numpy or Dask integer array, got "
                f"{type(array).__module__}.{type(array).__qualname__}. Convert it, e.g. "
                "numpy.asarray(labels, dtype='uint32')."
            )
        kind = np.dtype(array.dtype).kind
        if kind not in _LABEL_KINDS or np.dtype(array.dtype).itemsize > 8:
            raise UnsupportedResultError(
                f"Label images must be integer arrays (OME-NGFF), got dtype {array.dtype}. "
                "Convert it, e.g. labels.astype('uint32')."
            )
        record = open_reader(storage, image.group_path).record
        if tuple(array.shape) != image.shape:
            raise InvalidArgumentError(
                f"Labels of shape {tuple(array.shape)} do not fit image {image.group_path!r} of "
                f"shape {image.shape}: a label image has its image's shape."
            )
        meta = record.image if record.image is not None else parse_meta(len(image.shape))
        steps = tuple(level.step for level in record.levels)
        spec = SaveSpec(
            meta,
            explicit=False,
            label_of=image.group_path,
            steps=steps,
            colors=parse_colors(data.colors),
        )
        return array, spec
    if isinstance(data, Image):
        if levels is None:
            levels = data.levels
        explicit = data.has_meta
        axes, scale, units, translation = data.axes, data.scale, data.units, data.translation
        data = data.data
    else:
        explicit = any(v is not None for v in (axes, scale, units, translation))
    ndim = len(getattr(data, "shape", ()))
    parsed_levels = parse_levels(levels)
    if not explicit and default_axes(ndim) is None:
        return data, SaveSpec(None)
    meta = parse_meta(ndim, axes=axes, scale=scale, units=units, translation=translation)
    return data, SaveSpec(meta, levels=parsed_levels, explicit=explicit)
