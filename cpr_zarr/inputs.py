"""A task's image inputs, so that its outputs inherit their axes, scale and units."""

from __future__ import annotations

from typing import Any

from cpr_zarr.model.ngff import Image, ImageMeta, Labels, default_axes, parse_meta

__all__ = ["InputImages"]


class InputImages:
    """A task's image inputs, so its outputs inherit their axes, scale and units.

    An output array with the shape of an input result (or the shape of its trailing axes,
    when the output dropped leading non-space axes such as ``c``) is saved with that
    input's metadata; the first matching input in parameter order wins. A returned
    :class:`Image` with any metadata given keeps exactly what it gives, and
    :class:`Labels` may name their image (and a ``cpr_zarr.Table`` its label image) by
    the input array the task received.
    """

    def __init__(self) -> None:
        self._targets: list[Any] = []
        self._by_id: dict[int, Any] = {}
        self._keep: list[Any] = []  # keep loaded inputs alive so their ids stay unique

    def add(self, original: Any, loaded: Any) -> None:
        """Record the targets in an argument and the values the task received for them."""
        from cpr_zarr.target import ZarrTarget

        if isinstance(original, ZarrTarget) or hasattr(original, "image_meta"):  # or a source
            self._targets.append(original)
            self._by_id[id(loaded)] = original
            self._keep.append(loaded)
        elif isinstance(original, (tuple, list)) and isinstance(loaded, (tuple, list)):
            for o, v in zip(original, loaded, strict=False):
                self.add(o, v)
        elif isinstance(original, dict) and isinstance(loaded, dict):
            for k, o in original.items():
                self.add(o, loaded.get(k))

    def _meta_of(self, target: Any) -> ImageMeta:
        if hasattr(target, "image_meta"):  # TiffSource, ZarrSource
            meta: ImageMeta = target.image_meta()
            return meta
        image = target.store.reader(target).record.image
        return image if image is not None else parse_meta(len(target.shape))

    def inherited(self, shape: tuple[int, ...]) -> ImageMeta | None:
        """The metadata an output of this shape inherits, or None."""
        for target in self._targets:
            if tuple(target.shape) == shape and default_axes(len(shape)):
                return self._meta_of(target)
        for target in self._targets:
            n = len(target.shape) - len(shape)
            if n > 0 and tuple(target.shape[n:]) == shape:
                meta = self._meta_of(target)
                if all(t != "space" for t in meta.types[:n]) and default_axes(len(shape)):
                    try:
                        return meta.drop_leading(n)
                    except ValueError:
                        continue
        return None

    def prepare(self, value: Any) -> Any:
        """``value`` with the metadata it inherits (Image), or its image resolved (Labels)."""
        if isinstance(value, Labels):
            image = self._by_id.get(id(value.image), value.image)
            return Labels(value.data, image=image, colors=value.colors)
        if type(value).__module__ == "cpr_zarr.core.table":  # a Table (pandas is loaded)
            from cpr_zarr.core.table import Table

            if isinstance(value, Table):
                return Table(value.data, labels=self._by_id.get(id(value.labels), value.labels))
            return value
        if isinstance(value, Image):
            if value.has_meta:
                return value
            meta = self.inherited(tuple(value.data.shape))
            if meta is None:
                return value
            return Image(
                value.data,
                axes="".join(meta.axes),
                scale=meta.scale,
                units=meta.units,
                translation=meta.translation,
                levels=value.levels,
            )
        meta = self.inherited(tuple(value.shape))
        if meta is None:
            return value
        return Image(
            value,
            axes="".join(meta.axes),
            scale=meta.scale,
            units=meta.units,
            translation=meta.translation,
        )
