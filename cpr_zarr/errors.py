"""Every exception cpr_zarr raises.

Each class inherits :class:`CprZarrError` *and* the matching built-in, so callers
can catch either (the zarr-python convention).
"""

from __future__ import annotations

from cpr_zarr.redact import redact_text

__all__ = [
    "AmbiguousReferenceError",
    "ChunkVerificationError",
    "CprZarrError",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidNameError",
    "InvalidReferenceError",
    "RecordError",
    "ResultNotFoundError",
    "StoreError",
    "UnsupportedResultError",
]


class CprZarrError(Exception):
    """Base class of all cpr_zarr errors.

    Messages are redacted as they are made: URL userinfo and known secret values never
    reach a message, a log or a traceback (:mod:`cpr_zarr.redact`).
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class StoreError(CprZarrError, OSError):
    """A result store cannot be opened, created or written."""


class ResultNotFoundError(CprZarrError, KeyError):
    """No committed result matches a reference."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class AmbiguousReferenceError(CprZarrError, ValueError):
    """A hash prefix matches more than one committed result."""


class ChunkVerificationError(CprZarrError, OSError):
    """A chunk read from the store does not match the digest recorded at save time."""

    def __init__(
        self, message: str, *, store_url: str, group_path: str, chunk_index: tuple[int, ...]
    ) -> None:
        super().__init__(message)
        self.store_url = store_url
        self.group_path = group_path
        self.chunk_index = chunk_index

    def __reduce__(self) -> tuple[object, ...]:
        # keep the keyword-only fields when the error travels through Dask
        return (
            _rebuild_chunk_error,
            (str(self), self.store_url, self.group_path, self.chunk_index),
        )


def _rebuild_chunk_error(
    message: str, store_url: str, group_path: str, chunk_index: tuple[int, ...]
) -> ChunkVerificationError:
    return ChunkVerificationError(
        message, store_url=store_url, group_path=group_path, chunk_index=chunk_index
    )


class UnsupportedResultError(CprZarrError, TypeError):
    """A value cannot be stored as a cpr_zarr result (wrong type or dtype)."""


class InvalidNameError(CprZarrError, ValueError):
    """A result name cannot be used in a group path."""


class InvalidArgumentError(CprZarrError, ValueError):
    """An argument (chunks, compressor, metadata, colours...) is invalid; nothing was written."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type; nothing was written (catch ``TypeError`` or ``ValueError``)."""


class IntegrityError(CprZarrError, OSError):
    """A result's stored metadata does not match the content hash its group path names.

    Raised before anything is read: the commit record (``zarr.json`` of the group) is
    unreadable or does not hash to the content hash, or the stored array metadata
    disagrees with the record. ``field`` names what is wrong.
    """

    def __init__(self, message: str, *, store_url: str, group_path: str, field: str) -> None:
        super().__init__(message)
        self.store_url = store_url
        self.group_path = group_path
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_integrity_error, (str(self), self.store_url, self.group_path, self.field))


def _rebuild_integrity_error(
    message: str, store_url: str, group_path: str, field: str
) -> IntegrityError:
    return IntegrityError(message, store_url=store_url, group_path=group_path, field=field)


class InvalidReferenceError(CprZarrError, ValueError):
    """A reference or a stored path would name a place outside the store or its group."""


class RecordError(CprZarrError, ValueError):
    """A stored document (commit record, pyramid level, table schema, provenance record, store
    root) lacks a field of its format or holds a value of the wrong type.

    Raised by the ``from_dict`` parsers of :mod:`cpr_zarr.model.records`; ``field`` names the
    field (``"levels[1].shape"``). Readers of a result turn it into an
    :class:`IntegrityError` naming the store and group.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_record_error, (str(self), self.field))


def _rebuild_record_error(message: str, field: str) -> RecordError:
    return RecordError(message, field=field)
