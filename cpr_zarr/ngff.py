"""OME-NGFF 0.5 metadata for result groups: axes, units, scale, translation, labels.

A result's physical metadata (:class:`ImageMeta`) lives in the group's ``ome`` attributes
(NGFF ``multiscales``) and is mirrored in ``cpr_zarr.image``. It is *not* part of the
content hash: the hash identifies the base level's values. The rule when the same values
are saved again with different metadata: the first committed group wins, the existing
target is returned and a warning names both metadata sets (see :func:`metadata_conflict`).

:class:`Image` and :class:`Labels` wrap an array with the metadata to store it with; they
are accepted by ``ResultStore.save`` and as ``cpr_zarr.task`` return values.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.errors import InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = [
    "NGFF_VERSION",
    "SPACE_UNITS",
    "TIME_UNITS",
    "Image",
    "ImageMeta",
    "InputImages",
    "Labels",
    "SaveSpec",
    "default_axes",
    "image_label_attrs",
    "labels_group_attrs",
    "meta_from_attrs",
    "metadata_conflict",
    "multiscales_attrs",
    "parse_colors",
    "parse_meta",
    "resolve_save",
]

logger = logging.getLogger("cpr_zarr")

NGFF_VERSION = "0.5"
_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_AXIS_ORDER = {"time": 0, "channel": 1, "space": 2}
# the unit names NGFF allows (UDUNITS-2)
SPACE_UNITS = frozenset(
    [
        "angstrom",
        "attometer",
        "centimeter",
        "decimeter",
        "exameter",
        "femtometer",
        "foot",
        "gigameter",
        "hectometer",
        "inch",
        "kilometer",
        "megameter",
        "meter",
        "micrometer",
        "mile",
        "millimeter",
        "nanometer",
        "parsec",
        "petameter",
        "picometer",
        "terameter",
        "yard",
        "yoctometer",
        "yottameter",
        "zeptometer",
        "zettameter",
    ]
)
TIME_UNITS = frozenset(
    [
        "attosecond",
        "centisecond",
        "day",
        "decisecond",
        "exasecond",
        "femtosecond",
        "gigasecond",
        "hectosecond",
        "hour",
        "kilosecond",
        "megasecond",
        "microsecond",
        "millisecond",
        "minute",
        "nanosecond",
        "petasecond",
        "picosecond",
        "second",
        "terasecond",
        "yoctosecond",
        "yottasecond",
        "zeptosecond",
        "zettasecond",
    ]
)


def default_axes(ndim: int) -> str | None:
    """Axis names NGFF viewers expect for an ``ndim`` array, or None when NGFF has none (1-D, >5-D)."""
    return _DEFAULT_AXES.get(ndim)


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """Physical metadata of an image: one entry per array axis.

    Attributes
    ----------
    axes
        Axis names, e.g. ``("z", "y", "x")``.
    units
        NGFF unit per axis (``"micrometer"``, ``"second"``) or None.
    scale
        Pixel size of the base level per axis.
    translation
        Position of the first pixel's centre per axis.
    """

    axes: tuple[str, ...]
    units: tuple[str | None, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(_AXIS_TYPES[a] for a in self.axes)

    @property
    def space_axes(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.types) if t == "space")

    def to_dict(self) -> dict[str, Any]:
        return {
            "axes": "".join(self.axes),
            "units": list(self.units),
            "scale": list(self.scale),
            "translation": list(self.translation),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageMeta:
        return cls(
            axes=tuple(data["axes"]),
            units=tuple(data["units"]),
            scale=tuple(float(s) for s in data["scale"]),
            translation=tuple(float(t) for t in data["translation"]),
        )

    def drop_leading(self, n: int) -> ImageMeta:
        """The metadata of the trailing ``ndim - n`` axes (an output that dropped e.g. ``c``)."""
        return parse_meta(
            len(self.axes) - n,
            axes=self.axes[n:],
            scale=self.scale[n:],
            units=self.units[n:],
            translation=self.translation[n:],
        )


def _per_axis(
    value: object, ndim: int, space: tuple[int, ...], fill: Any, what: str, example: str
) -> tuple[Any, ...]:
    """A value per axis from a scalar, one value per axis, or one value per space axis."""
    if isinstance(value, (int, float, str, np.number)) and not isinstance(value, (bool, np.bool_)):
        return tuple(value if i in space else fill for i in range(ndim))
    values: tuple[Any, ...] = ()
    if not isinstance(value, (bytes, dict, set, frozenset)):
        try:
            values = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            values = ()
    if len(values) == ndim:
        return values
    if len(values) == len(space) and values:
        it = iter(values)
        return tuple(next(it) if i in space else fill for i in range(ndim))
    raise (InvalidArgumentError if values else InvalidArgumentTypeError)(
        f"Invalid {what} {value!r} for a {ndim}-D array: give one value per axis ({ndim}), "
        f"one per space axis ({len(space)}), or a single value for all space axes, "
        f"e.g. {what}={example}."
    )


def _numbers(values: tuple[Any, ...], what: str, given: object, example: str) -> tuple[float, ...]:
    """``values`` as floats; a bool, string or other non-number is refused, not coerced."""
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            raise InvalidArgumentTypeError(
                f"Invalid {what} {given!r}: {v!r} is not a number. Give numbers, e.g. "
                f"{what}={example}."
            )
        out.append(float(v))
    return tuple(out)


def parse_meta(
    ndim: int,
    *,
    axes: object = None,
    scale: object = None,
    units: object = None,
    translation: object = None,
) -> ImageMeta:
    """Validate user metadata for an ``ndim`` array; defaults: axes from ndim, scale 1, no unit.

    Raises
    ------
    InvalidArgumentError
        If NGFF cannot describe the array (1-D or more than 5-D) or a value is invalid
        (a ``ValueError``; :class:`~cpr_zarr.errors.InvalidArgumentTypeError`, also a
        ``TypeError``, for values of the wrong type).
    """
    if axes is None:
        axes = default_axes(ndim)
        if axes is None:
            raise InvalidArgumentError(
                f"OME-NGFF describes 2-D to 5-D images; this array is {ndim}-D. Save it "
                "without axes/scale/units, or reshape it."
            )
    example = repr(default_axes(ndim) or "zyx")
    if isinstance(axes, str):
        names: tuple[str, ...] = tuple(axes)
    elif isinstance(axes, (list, tuple)) and all(isinstance(a, str) for a in axes):
        names = tuple(axes)
    else:
        raise InvalidArgumentTypeError(
            f"Invalid axes {axes!r}: give a string of axis names or a list of them, "
            f"e.g. axes={example}."
        )
    if len(names) != ndim or any(n not in _AXIS_TYPES for n in names):
        raise InvalidArgumentError(
            f"Invalid axes {axes!r} for a {ndim}-D array: give {ndim} names out of t, c, z, y, "
            f"x, e.g. axes={example}."
        )
    types = [_AXIS_TYPES[n] for n in names]
    if (
        len(set(names)) != ndim
        or not 2 <= types.count("space") <= 3
        or types != sorted(types, key=_AXIS_ORDER.__getitem__)
    ):
        raise InvalidArgumentError(
            f"Invalid axes {axes!r}: OME-NGFF needs unique names, 2 or 3 space axes (z, y, x), "
            f"and the order time, channel, space (e.g. 'tczyx', 'cyx', 'zyx')."
        )
    space = tuple(i for i, t in enumerate(types) if t == "space")
    scale_example = "(2.0, 0.65, 0.65)"
    scales = _numbers(
        _per_axis(1.0 if scale is None else scale, ndim, space, 1.0, "scale", scale_example),
        "scale",
        scale,
        scale_example,
    )
    if any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise InvalidArgumentError(
            f"Invalid scale {scale!r}: pixel sizes must be positive and finite (a size per "
            f"axis, e.g. scale={scale_example}); flip an axis by reversing the array instead."
        )
    shift_example = "(0.0, 10.0, 10.0)"
    shifts = _numbers(
        _per_axis(
            0.0 if translation is None else translation,
            ndim,
            space,
            0.0,
            "translation",
            shift_example,
        ),
        "translation",
        translation,
        shift_example,
    )
    if any(not math.isfinite(t) for t in shifts):
        raise InvalidArgumentError(
            f"Invalid translation {translation!r}: values must be finite, e.g. "
            f"translation={shift_example}."
        )
    unit_list = (
        _per_axis(units, ndim, space, None, "units", "'micrometer'")
        if units is not None
        else (None,) * ndim
    )
    for name, kind, unit in zip(names, types, unit_list, strict=True):
        allowed = SPACE_UNITS if kind == "space" else TIME_UNITS if kind == "time" else frozenset()
        if unit is not None and unit not in allowed:
            hint = f"one of {sorted(allowed)}" if allowed else "None (channel axes have no unit)"
            raise InvalidArgumentError(
                f"Invalid unit {unit!r} for {kind} axis {name!r}: use {hint}."
            )
    return ImageMeta(names, tuple(unit_list), scales, shifts)


def meta_from_attrs(attributes: dict[str, Any]) -> ImageMeta | None:
    """The metadata recorded in a result group's attributes (None if it has none)."""
    image = attributes.get("cpr_zarr", {}).get("image")
    if isinstance(image, dict):
        return ImageMeta.from_dict(image)
    return None


def metadata_conflict(existing: ImageMeta | None, wanted: ImageMeta | None) -> str | None:
    """A description of how ``wanted`` differs from ``existing``, or None if they agree."""
    if wanted is None or existing == wanted:
        return None
    return f"stored with {existing.to_dict() if existing else None}, requested {wanted.to_dict()}"


def multiscales_attrs(
    name: str,
    meta: ImageMeta,
    levels: list[tuple[str, tuple[int, ...]]] | None = None,
    *,
    centered: bool = True,
) -> dict[str, Any]:
    """The ``ome`` attribute of an image group.

    ``levels`` lists ``(path, cumulative downsampling factor per axis)``, base first. With
    ``centered`` (mean downsampling) a level's first pixel covers ``f`` base pixels, so its
    centre moves by ``(f - 1) / 2`` base pixels; nearest (strided) levels keep the origin.
    """
    if levels is None:
        levels = [("0", (1,) * len(meta.axes))]
    axes = []
    for a, t, u in zip(meta.axes, meta.types, meta.units, strict=True):
        axis: dict[str, Any] = {"name": a, "type": t}
        if u is not None:
            axis["unit"] = u
        axes.append(axis)
    datasets = []
    for path, factors in levels:
        scale = [s * f for s, f in zip(meta.scale, factors, strict=True)]
        shift = [
            t + ((f - 1) / 2 * s if centered else 0.0)
            for t, s, f in zip(meta.translation, meta.scale, factors, strict=True)
        ]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    multiscale: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if len(levels) > 1:
        multiscale["type"] = "mean" if centered else "nearest"
    return {"version": NGFF_VERSION, "multiscales": [multiscale]}


def _rgba(value: object, rgba: object) -> tuple[int, int, int, int]:
    """One label colour: 3 or 4 integers 0-255, or a ``"#rrggbb"`` / ``"#rrggbbaa"`` string."""
    fix = (
        "give 3 or 4 integers 0-255 or a hex string, e.g. colors={1: (255, 0, 0)} or "
        "colors={1: '#ff0000'}"
    )
    if isinstance(rgba, str):
        digits = rgba[1:] if rgba.startswith("#") else ""
        try:
            channels = tuple(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
        except ValueError:
            channels = ()
        if len(digits) not in (6, 8) or len(channels) not in (3, 4):
            raise InvalidArgumentError(
                f"Invalid colour {rgba!r} for label {value!r}: colour names are not "
                f"supported; {fix}."
            )
    else:
        try:
            items: tuple[Any, ...] | None = tuple(rgba)  # type: ignore[arg-type]
        except TypeError:
            items = None
        if items is None or any(
            isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)) for c in items
        ):
            raise InvalidArgumentTypeError(
                f"Invalid colour {rgba!r} for label {value!r}: {fix} (multiply 0-1 floats "
                "by 255 and round them)."
            )
        channels = tuple(int(c) for c in items)
    if len(channels) == 3:
        channels = (*channels, 255)
    if len(channels) != 4 or any(not 0 <= c <= 255 for c in channels):
        raise InvalidArgumentError(f"Invalid colour {rgba!r} for label {value!r}: {fix}.")
    return channels[0], channels[1], channels[2], channels[3]


def parse_colors(colors: object) -> tuple[tuple[int, tuple[int, int, int, int]], ...] | None:
    """Label colours as sorted ``(label value, RGBA 0-255)`` pairs, from a dict.

    Raises
    ------
    InvalidArgumentError
        For anything but a dict of int label values to 3 or 4 channels 0-255 (or hex strings).
    """
    if colors is None:
        return None
    if not isinstance(colors, dict):
        raise InvalidArgumentTypeError(
            f"colors must be a dict of label value -> RGBA (0-255), got {colors!r}; e.g. "
            "colors={1: (255, 0, 0, 255)}."
        )
    out = []
    for value, rgba in colors.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise InvalidArgumentTypeError(
                f"Invalid label value {value!r} in colors: keys are the integer label values "
                "of the label image, e.g. colors={1: (255, 0, 0, 255)}."
            )
        out.append((int(value), _rgba(value, rgba)))
    return tuple(sorted(out))


def image_label_attrs(
    colors: tuple[tuple[int, tuple[int, int, int, int]], ...] | None,
) -> dict[str, Any]:
    """The ``image-label`` attribute; the label group sits at ``<image>/labels/<name>``."""
    attrs: dict[str, Any] = {"source": {"image": "../../"}}
    if colors:
        attrs["colors"] = [{"label-value": v, "rgba": list(c)} for v, c in colors]
    return attrs


def labels_group_attrs(names: list[str]) -> dict[str, Any]:
    """The ``ome`` attribute of an image's ``labels`` group."""
    return {"version": NGFF_VERSION, "labels": sorted(names)}


@dataclass(frozen=True)
class Image:
    """An array to store with physical metadata (``ResultStore.save`` or a task's return value).

    Parameters
    ----------
    data
        A numpy or Dask array.
    axes
        Axis names out of ``t c z y x`` in NGFF order, e.g. ``"zyx"``; default from ndim.
    scale
        Pixel size per axis (or per space axis, or one value for all space axes); default 1.
    units
        NGFF unit names, e.g. ``"micrometer"`` for all space axes, or one per axis.
    translation
        Position of the first pixel per axis; default 0.
    levels
        Number of multiscale levels including the base; default: a pyramid down to 512
        pixels when any space axis is longer than that.
    """

    data: Any
    axes: Any = None
    scale: Any = None
    units: Any = None
    translation: Any = None
    levels: int | None = None

    def __post_init__(self) -> None:
        from cpr_zarr.pyramid import parse_levels

        parse_levels(self.levels)  # bad arguments fail here, where they were written
        shape = getattr(self.data, "shape", None)
        if self.has_meta and isinstance(shape, tuple):
            self.meta(len(shape))

    def meta(self, ndim: int) -> ImageMeta:
        return parse_meta(
            ndim, axes=self.axes, scale=self.scale, units=self.units, translation=self.translation
        )

    @property
    def has_meta(self) -> bool:
        return any(v is not None for v in (self.axes, self.scale, self.units, self.translation))


@dataclass(frozen=True)
class Labels:
    """An integer array to store as an NGFF label image of ``image``.

    The labels are saved inside the image's group (``<image group>/labels/<name>-<hash>``)
    with the image's axes, scale, units and pyramid levels, so viewers overlay them on it.

    Parameters
    ----------
    data
        An integer numpy or Dask array with the image's shape.
    image
        The image result (a ``ZarrTarget``; inside a ``cpr_zarr.task`` also the input array
        the task received for it).
    colors
        Optional ``{label value: (r, g, b[, a])}`` with 0-255 channels.
    """

    data: Any
    image: Any
    colors: Any = field(default=None)

    def __post_init__(self) -> None:
        parse_colors(self.colors)  # a bad colour fails here, where it was written


# -- the NGFF side of a save (used by cpr_zarr.writer) -----------------------------------

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
        from cpr_zarr.layout import group_path

        path = group_path(name, content_hash)
        return path if self.label_of is None else f"{self.label_of}/{_LABELS_DIR}/{path}"

    def find(self, store: ResultStore, content_hash: str, path: str) -> ZarrTarget | None:
        """An existing committed result for this save, warning if its metadata differs."""
        if self.label_of is not None:
            attrs = store._committed_attrs(path)
            if attrs is None:
                return None
            _update_labels_list(store, self.label_of)  # a crash may have left it unlisted
            return store._target(path, attrs)
        found = store._find(content_hash, preferred=path)
        if found is not None and self.explicit:
            doc = store._get_json(f"{found.group_path}/zarr.json") or {}
            conflict = metadata_conflict(meta_from_attrs(doc.get("attributes", {})), self.meta)
            if conflict is not None:
                logger.warning(
                    "Result %s in store %s already holds these values, %s; returning it "
                    "unchanged (metadata does not change the content hash: the first save "
                    "wins). To store it with the new metadata, delete it first.",
                    found.group_path,
                    store.url,
                    conflict,
                )
        return found

    def group_attributes(
        self, store: ResultStore, path: str, name: str, *, base: np.ndarray | None = None
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Write the pyramid levels; return the ``ome`` attribute and extra ``cpr_zarr`` ones."""
        from cpr_zarr import pyramid

        if self.meta is None:
            return None, {}
        label = self.label_of is not None
        doc = store._get_json(f"{path}/0/zarr.json") or {}
        shape = tuple(doc.get("shape", ()))
        if self.steps is not None:
            steps = list(self.steps)
        else:
            steps = pyramid.plan_levels(shape, self.meta, self.levels)
        method = "nearest" if label or doc.get("data_type") == "bool" else "mean"
        records = pyramid.write_levels(store, path, steps, method, list(self.meta.axes), base=base)
        levels = [("0", (1,) * len(shape))]
        cumulative = (1,) * len(shape)
        for record in records:
            cumulative = tuple(c * s for c, s in zip(cumulative, record["step"], strict=True))
            levels.append((record["path"], cumulative))
        ome = multiscales_attrs(name, self.meta, levels, centered=method == "mean")
        extra: dict[str, Any] = {"image": self.meta.to_dict()}
        if records:
            extra["levels"] = records
        if label:
            ome["image-label"] = image_label_attrs(self.colors)
            extra["labels_of"] = self.label_of
        return ome, extra

    def after_commit(self, store: ResultStore) -> None:
        if self.label_of is not None:
            _update_labels_list(store, self.label_of)


def _update_labels_list(store: ResultStore, image_path: str) -> None:
    """Make ``<image>/labels/zarr.json`` list every committed label group of the image.

    Each writer lists after committing its own label group, writes the sorted list, and
    re-lists until what it wrote matches what it sees: with concurrent writers of different
    labels the last write is made after every label it must list was committed, so none is
    lost. The document is a pure function of the committed labels, so identical states give
    identical bytes. It is a viewer index only: ``labels_of`` in each label group records
    the attachment authoritatively.
    """
    from cpr_zarr.layout import parse_group_path

    key = f"{image_path}/{_LABELS_DIR}/zarr.json"
    for _ in range(10):
        names = [
            entry
            for entry in store._list_dir(f"{image_path}/{_LABELS_DIR}")
            if parse_group_path(entry) is not None
            and store._committed_attrs(f"{image_path}/{_LABELS_DIR}/{entry}") is not None
        ]
        doc = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": labels_group_attrs(names)},
        }
        if store._get_json(key) == doc:
            return
        store._set_json(key, doc)


update_labels_list = _update_labels_list  # the public name (store.delete, the collector)


def resolve_save(
    store: ResultStore,
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

    from cpr_zarr import pyramid
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
        if image.store_url != store.url:
            raise InvalidArgumentError(
                f"Labels are stored inside their image's group, but image {image.group_path!r} "
                f"is in store {image.store_url!r}, not {store.url!r}. Save them to that store."
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
        attrs = store.reader(image).attrs
        if tuple(array.shape) != image.shape:
            raise InvalidArgumentError(
                f"Labels of shape {tuple(array.shape)} do not fit image {image.group_path!r} of "
                f"shape {image.shape}: a label image has its image's shape."
            )
        meta_doc = attrs.get("image")
        meta = (
            ImageMeta.from_dict(meta_doc)
            if isinstance(meta_doc, dict)
            else parse_meta(len(image.shape))
        )
        steps = tuple(tuple(r["step"]) for r in attrs.get("levels", []))
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
    parsed_levels = pyramid.parse_levels(levels)
    if not explicit and default_axes(ndim) is None:
        return data, SaveSpec(None)
    meta = parse_meta(ndim, axes=axes, scale=scale, units=units, translation=translation)
    return data, SaveSpec(meta, levels=parsed_levels, explicit=explicit)


class InputImages:
    """A task's image inputs, so its outputs inherit their axes, scale and units.

    An output array with the shape of an input result (or the shape of its trailing axes,
    when the output dropped leading non-space axes such as ``c``) is saved with that
    input's metadata; the first matching input in parameter order wins. A returned
    :class:`Image` with any metadata given keeps exactly what it gives, and
    :class:`Labels` may name their image by the input array the task received.
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

    def _meta(self, target: Any) -> ImageMeta:
        if hasattr(target, "image_meta"):  # TiffSource, ZarrSource
            meta: ImageMeta = target.image_meta()
            return meta
        attrs = target.store.reader(target).attrs.get("image")
        return (
            ImageMeta.from_dict(attrs) if isinstance(attrs, dict) else parse_meta(len(target.shape))
        )

    def inherited(self, shape: tuple[int, ...]) -> ImageMeta | None:
        """The metadata an output of this shape inherits, or None."""
        for target in self._targets:
            if tuple(target.shape) == shape and default_axes(len(shape)):
                return self._meta(target)
        for target in self._targets:
            n = len(target.shape) - len(shape)
            if n > 0 and tuple(target.shape[n:]) == shape:
                meta = self._meta(target)
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
