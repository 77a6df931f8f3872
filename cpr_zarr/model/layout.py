"""Where things live in a store: names, group paths, dtypes and chunk grids (pure functions).

A result group is named ``<name>-<content hash>`` directly under the store root, so
``ls results.zarr`` is readable and a hash (or a unique prefix of it) finds a group.
Names starting with ``_`` or ``.`` are reserved for the store's own bookkeeping.

Inside a result group (layout 2), zarr and OME tools see only the image's arrays and
``labels/``; cpr_zarr's own data lives under :data:`AUX_DIR`, as plain objects that are not
zarr nodes (no ``zarr.json``)::

    <name>-<hash>/cpr_zarr/record.json                    copy of the commit record
    <name>-<hash>/cpr_zarr/digests/<array>/<height>/<i>   per-chunk digest blocks (binary)
    <name>-<hash>/cpr_zarr/provenance/<time>-<id>.json    provenance records

Layout 1 (read, verified, listed and collected; never written) kept per-chunk digests as
JSON in the commit record and the copy and provenance as zarr groups
(``cpr_zarr_record/``, ``provenance/``).
"""

from __future__ import annotations

import itertools
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from cpr_zarr.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNameError,
    InvalidReferenceError,
    UnsupportedResultError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "AUX_DIR",
    "DIGEST_BLOCK",
    "HASH_HEX_LENGTH",
    "LAYOUT_VERSION",
    "MAX_CHUNK_BYTES",
    "MIN_PREFIX_LENGTH",
    "READ_LAYOUTS",
    "canonical_dtype",
    "chunk_grid",
    "default_chunks",
    "digest_block_key",
    "group_path",
    "parse_chunks",
    "parse_group_path",
    "parse_member_path",
    "parse_name",
]

#: the record layout this version writes (see the module docstring)
LAYOUT_VERSION = 2
#: the record layouts this version reads
READ_LAYOUTS = frozenset({1, 2})
#: cpr_zarr's own, non-node folder inside a result group (layout 2)
AUX_DIR = "cpr_zarr"
#: chunk digests per digest block (16 bytes each: a block holds at most 16 KiB)
DIGEST_BLOCK = 1024
HASH_HEX_LENGTH = 32
MIN_PREFIX_LENGTH = 6
TARGET_CHUNK_BYTES = 8 * 2**20
MAX_CHUNK_BYTES = 2**31 - 2**16  # Blosc compresses at most 2 GiB minus its overhead per call
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_GROUP_RE = re.compile(
    rf"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{{0,99}})-(?P<hash>[0-9a-f]{{{HASH_HEX_LENGTH}}})"
)
_LABELS = "labels"
_TABLES = "tables"
_MEMBER_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_SUPPORTED_KINDS = {
    "b": "bool",
    "i": "signed integer",
    "u": "unsigned integer",
    "f": "float",
    "c": "complex",
}


def parse_name(name: object) -> str:
    """Return ``name`` if it can head a group path, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(
            f"A result name must be a string, got {name!r} of type {type(name).__name__}. "
            "Pass name='denoised' (letters, digits, '_', '.', '-')."
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"Invalid result name {name!r}: a name must start with a letter or digit, use only "
            "letters, digits, '_', '.' and '-', and be at most 100 characters "
            "(it becomes part of a folder or object name). Example: name='nuclei_labels'."
        )
    return name


def group_path(name: str, content_hash: str) -> str:
    """The group path of a result: ``<name>-<content hash>``."""
    return f"{parse_name(name)}-{content_hash}"


def digest_block_key(array_path: str, height: int, index: int) -> str:
    """The key, inside a result group, of digest block ``index`` at ``height`` of an array's
    digest tree (height 0 holds chunk digests; see :func:`~cpr_zarr.model.hashing.digest_tree`)."""
    return f"{AUX_DIR}/digests/{array_path}/{height}/{index}"


def parse_group_path(path: str) -> tuple[str, str] | None:
    """Split a group path into ``(name, content_hash)``; ``None`` if it is not a result path.

    A result path is ``<name>-<hash>`` (a result at the root),
    ``<name>-<hash>/labels/<name>-<hash>`` (a label image inside its image) or
    ``<name>-<hash>/tables/<name>-<hash>`` (a table stored with its image); the pair returned
    is the last group's. Nothing else is one: no ``..`` or ``.`` segment, no empty segment,
    no leading ``/``, no backslash, so a path read from a user, a pointer or a record can
    never name a place outside the store.
    """
    if not isinstance(path, str):
        return None
    parts = path.split("/")
    if len(parts) == 3 and parts[1] in (_LABELS, _TABLES):
        if _GROUP_RE.fullmatch(parts[0]) is None:
            return None
        parts = parts[2:]
    if len(parts) != 1:
        return None
    match = _GROUP_RE.fullmatch(parts[0])
    if match is None:
        return None
    return match["name"], match["hash"]


def parse_member_path(path: object, *, where: str) -> str:
    """Return a path *inside* a result group read from a stored record (``"0"``, ``"1-2x2"``).

    ``where`` names the record (store and group) for the message.

    Raises
    ------
    InvalidReferenceError
        If it is not a relative path of plain segments (no ``..``, ``.``, empty segment,
        leading ``/`` or backslash): a record naming a place outside its group is damaged.
    """
    if not isinstance(path, str) or not all(
        _MEMBER_SEGMENT_RE.fullmatch(part) for part in path.split("/")
    ):
        raise InvalidReferenceError(
            f"The commit record of {where} names the array path {path!r}, which is not a "
            "plain relative path inside the result group (letters, digits, '_', '.', '-' "
            "segments; no '..', no leading '/', no backslash). The record is damaged or was "
            "written by something other than cpr_zarr: nothing outside the group is read. "
            "Delete the result and re-run the task that produced it."
        )
    return path


def canonical_dtype(dtype: object, *, what: str = "array") -> np.dtype:
    """The little-endian dtype a result is stored (and hashed) with.

    Raises
    ------
    UnsupportedResultError
        For object, string, bytes, structured, datetime and other dtypes zarr viewers cannot show.
    """
    dt: np.dtype[Any] = np.dtype(dtype)  # type: ignore[call-overload]
    if (dt.kind == "f" and dt.itemsize > 8) or (dt.kind == "c" and dt.itemsize > 16):
        raise UnsupportedResultError(
            f"Cannot store {what} with dtype {dt!r} (numpy longdouble): zarr has no such data "
            "type, and its precision differs between platforms (80-bit on x86 Linux, 64-bit "
            "on Windows and ARM macOS). Convert it, e.g. x.astype('float64') (15-16 "
            "significant digits) or x.astype('complex128'); to keep every bit, store "
            "hi = x.astype('float64') and lo = (x - hi).astype('float64') as two results."
        )
    if dt.kind not in _SUPPORTED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsupportedResultError(
            f"Cannot store {what} with dtype {dt!r}: cpr_zarr stores bool, integer, float and "
            "complex arrays. Convert it first (e.g. labels.astype('uint32')), or return "
            "strings/objects as a pandas DataFrame or a small JSON-able value instead."
        )
    return dt.newbyteorder("<") if dt.itemsize > 1 else dt


def default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    """Chunks of about 8 MiB: 256 x 256 in the last two axes of a volume, the rest filled up.

    A big uint16 ``(z, y, x)`` stack gets ``(64, 256, 256)``; 2-D images are cut in
    columns 1024 pixels wide.
    """
    ndim = len(shape)
    budget = max(1, TARGET_CHUNK_BYTES // dtype.itemsize)
    chunks = [1] * ndim
    for axis in reversed(range(ndim)):
        room = max(1, budget // math.prod(chunks))
        if ndim >= 3 and axis >= ndim - 2:
            cap = 256
        elif ndim == 2 and axis == 1:
            cap = 1024
        else:
            cap = room
        chunks[axis] = min(max(1, shape[axis]), cap, room)
    return tuple(chunks)


def parse_chunks(
    chunks: object, shape: tuple[int, ...], dtype: np.dtype, *, where: str = "the array"
) -> tuple[int, ...]:
    """Validate a user's chunk shape.

    ``None`` or ``"auto"`` mean :func:`default_chunks`; an int applies to every axis; ``-1``
    on an axis means the whole axis (like Dask). Sizes larger than the array are clipped.

    Raises
    ------
    InvalidArgumentError
        Naming the rule broken, the value, ``where`` and an example that works.
    """
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return default_chunks(shape, dtype)
    example = default_chunks(shape, dtype)

    def bad(rule: str, error: type[InvalidArgumentError] = InvalidArgumentError) -> Exception:
        return error(
            f"Invalid chunks {chunks!r} for {where} of shape {shape}: {rule}. Give one "
            f"positive integer per axis ({len(shape)} values), e.g. chunks={example} (-1 for a "
            "whole axis), or chunks=None / 'auto' for about 8 MiB per chunk."
        )

    if isinstance(chunks, (str, bytes, dict, bool, np.bool_)):
        raise bad(
            f"a {type(chunks).__name__} is not a chunk shape (the only string is 'auto')",
            InvalidArgumentTypeError,
        )
    if isinstance(chunks, (int, np.integer)):
        chunks = (int(chunks),) * len(shape)
    try:
        items: tuple[Any, ...] = tuple(chunks)  # type: ignore[arg-type]
    except TypeError:
        raise bad(
            f"a {type(chunks).__name__} is not a chunk shape", InvalidArgumentTypeError
        ) from None
    if len(items) != len(shape):
        raise bad(f"{len(items)} value(s) for a {len(shape)}-D array")
    parsed = []
    for axis, (c, s) in enumerate(zip(items, shape, strict=True)):
        if isinstance(c, float) and c.is_integer():
            c = int(c)
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise bad(f"axis {axis} has {c!r}, not an integer", InvalidArgumentTypeError)
        size = max(1, s) if c == -1 else int(c)
        if size < 1:
            raise bad(f"axis {axis} has {c!r}; chunk sizes are positive (or -1 for the axis)")
        parsed.append(min(size, max(1, s)))
    nbytes = math.prod(parsed) * dtype.itemsize
    if nbytes > MAX_CHUNK_BYTES:
        raise bad(
            f"one chunk would hold {nbytes:,} bytes; a chunk must stay under 2 GiB "
            "(Blosc's limit per buffer, and a chunk is read whole)"
        )
    return tuple(parsed)


def chunk_grid(
    shape: tuple[int, ...], chunks: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """Yield ``(chunk index, slices)`` for every chunk, in C order."""
    counts = [math.ceil(s / c) if s else 0 for s, c in zip(shape, chunks, strict=True)]
    for index in itertools.product(*(range(n) for n in counts)):
        yield (
            index,
            tuple(
                slice(i * c, min((i + 1) * c, s))
                for i, c, s in zip(index, chunks, shape, strict=True)
            ),
        )
