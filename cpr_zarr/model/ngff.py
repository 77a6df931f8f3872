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

import colorsys
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cpr_zarr.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "DOWNSAMPLE_METHOD",
    "DOWNSAMPLE_VERSION",
    "MAX_DEFAULT_COLORS",
    "MAX_LEVELS",
    "NGFF_VERSION",
    "SPACE_UNITS",
    "TIME_UNITS",
    "Image",
    "ImageMeta",
    "Labels",
    "default_axes",
    "default_colors",
    "image_label_attrs",
    "labels_group_attrs",
    "meta_from_attrs",
    "metadata_conflict",
    "multiscales_attrs",
    "parse_colors",
    "parse_levels",
    "parse_meta",
]

logger = logging.getLogger("cpr_zarr")

NGFF_VERSION = "0.5"
# what the multiscales ``metadata`` names as the downsampling: cpr_zarr's own function and the
# version of its algorithm (mean of boxes rounded half to even / strided nearest), not of the
# package; bump it if the values a level gets ever change
DOWNSAMPLE_METHOD = "cpr_zarr.core.pyramid.downsample"
DOWNSAMPLE_VERSION = "1"
# at most this many generated label colours (0 and 1..1023): ~97 kB of the indented zarr.json
MAX_DEFAULT_COLORS = 1024
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


MAX_LEVELS = 10  # multiscale levels of a result, base included


def parse_levels(levels: object) -> int | None:
    """``None`` (automatic) or a number of levels >= 1 including the base."""
    if levels is None:
        return None
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
        raise InvalidArgumentError(
            f"Invalid levels {levels!r}: give the number of multiscale levels including the base "
            f"(1 = no pyramid, at most {MAX_LEVELS}), or None for automatic."
        )
    return levels


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
    complete: bool = True,
) -> dict[str, Any]:
    """The ``ome`` attribute of an image group.

    ``levels`` lists ``(path, cumulative downsampling factor per axis)``, base first. With
    ``centered`` (mean downsampling) a level's first pixel covers ``f`` base pixels, so its
    centre moves by ``(f - 1) / 2`` base pixels; nearest (strided) levels keep the origin.

    The multiscale names its downsampling ``type`` (``"mean"`` or ``"nearest"``: the method
    cpr_zarr uses for this kind of image, also when there is one level) and ``metadata``
    (method, version and the per-level steps), which the strict NGFF schema asks for.
    ``complete=False`` gives the form written before these were added (``type`` only with
    several levels, no ``metadata``): stores written then still verify against it.
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
    method = "mean" if centered else "nearest"
    if not complete:
        if len(levels) > 1:
            multiscale["type"] = method
        return {"version": NGFF_VERSION, "multiscales": [multiscale]}
    multiscale["type"] = method
    steps = [
        [f // p for f, p in zip(factors, previous, strict=True)]
        for (_, previous), (_, factors) in itertools.pairwise(levels)
    ]
    multiscale["metadata"] = {
        "description": (
            "Each level reduces the one before it by its step per axis: the mean of each "
            "box (integers rounded half to even), or nearest (strided) sampling for label "
            "images and masks."
        ),
        "method": DOWNSAMPLE_METHOD,
        "version": DOWNSAMPLE_VERSION,
        "args": [],
        "kwargs": {"method": method, "steps": steps},
    }
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


def default_colors(max_label: int) -> tuple[tuple[int, tuple[int, int, int, int]], ...]:
    """A colour per label value ``0..max_label`` (at most :data:`MAX_DEFAULT_COLORS`).

    0 (background) is transparent; the others get well separated opaque hues (golden-ratio
    steps around the colour wheel), the same for the same value in every label image. A
    label image with more values than the bound gets colours for the first ones only:
    viewers that draw from the table (napari-ome-zarr) leave the others uncoloured; give
    ``colors=`` to choose them.
    """
    out: list[tuple[int, tuple[int, int, int, int]]] = [(0, (0, 0, 0, 0))]
    for value in range(1, max(0, min(max_label, MAX_DEFAULT_COLORS - 1)) + 1):
        hue = (value * 0.618033988749895) % 1.0
        saturation = 0.55 + 0.45 * ((value * 7) % 3) / 2
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, 0.95)
        out.append((value, (round(r * 255), round(g * 255), round(b * 255), 255)))
    return tuple(out)


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
