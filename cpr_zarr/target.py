"""``ZarrTarget``: the small pointer that stands for a stored result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dask.array
    import numpy as np
    import zarr

    from cpr_zarr.store import ResultStore

__all__ = ["PILTarget", "ZarrTarget"]

_FIELDS = ("store_url", "group_path", "content_hash", "shape", "dtype", "chunks")


@dataclass(frozen=True, slots=True)
class ZarrTarget:
    """A pointer to one committed result in a :class:`~cpr_zarr.ResultStore`.

    It holds no data and no credentials: it pickles and serialises to JSON in a
    few hundred bytes, so it is what Prefect records and what travels through Dask.

    Attributes
    ----------
    store_url
        The store's URL (a local absolute path, ``memory://...``, ``s3://...``), without credentials.
    group_path
        The result's group inside the store, ``<name>-<content_hash>``.
    content_hash
        The hash of the result's decoded values, shape, dtype and chunk shape.
    shape, dtype, chunks
        Of the stored array (``dtype`` as a numpy dtype name such as ``"uint16"``).
    """

    store_url: str
    group_path: str
    content_hash: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]

    @property
    def name(self) -> str:
        """The readable part of the group path (of its last component, for label images)."""
        return self.group_path.rsplit("/", 1)[-1][: -len(self.content_hash) - 1]

    @property
    def store(self) -> ResultStore:
        """The store holding this result (opened once per process and URL)."""
        from cpr_zarr.store import open_store

        return open_store(self.store_url)

    def get_data(self, *, verify: bool = True) -> dask.array.Array:
        """A lazy Dask array reading only the chunks it touches.

        Each chunk is checked against its recorded digest as it is read (``verify=True``);
        a mismatch raises :class:`~cpr_zarr.errors.ChunkVerificationError`.
        """
        return self.store.reader(self).to_dask(verify=verify)

    def to_numpy(self, *, verify: bool = True) -> np.ndarray:
        """Read the whole result into memory, verifying every chunk."""
        return self.store.reader(self).to_numpy(verify=verify)

    def zarr_array(self) -> zarr.Array[Any]:
        """The stored base array, opened read-only with plain zarr (no verification)."""
        return self.store.reader(self).array

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: plain strings, ints and lists."""
        return {
            "store_url": self.store_url,
            "group_path": self.group_path,
            "content_hash": self.content_hash,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZarrTarget:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming missing or extra keys."""
        keys = set(data)
        if keys != set(_FIELDS):
            raise ValueError(
                f"Not a ZarrTarget dict: expected keys {sorted(_FIELDS)}, got {sorted(keys)} in {data!r}."
            )
        return cls(
            store_url=str(data["store_url"]),
            group_path=str(data["group_path"]),
            content_hash=str(data["content_hash"]),
            shape=tuple(int(s) for s in data["shape"]),
            dtype=str(data["dtype"]),
            chunks=tuple(int(c) for c in data["chunks"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def __dask_tokenize__(self) -> tuple[str, str]:
        # the content hash is the identity: never let dask pickle or walk the target
        return ("cpr_zarr.ZarrTarget", self.content_hash)

    def __repr__(self) -> str:
        return (
            f"ZarrTarget({self.store_url!r}, {self.group_path!r}, shape={self.shape}, "
            f"dtype={self.dtype!r}, chunks={self.chunks})"
        )


@dataclass(frozen=True, slots=True, repr=False)
class PILTarget(ZarrTarget):
    """A PIL image returned by a ``cpr_zarr.task``: stored as an array, read back as PIL.

    Multi-band images (RGB, RGBA) are stored channel-first (``c, y, x``), as OME-NGFF wants.
    """

    pil_mode: str = "L"

    def to_pil(self) -> Any:
        """The image as a ``PIL.Image.Image`` (its mode as returned)."""
        import numpy as np
        from PIL import Image

        data = self.to_numpy()
        if data.ndim == 3:
            data = np.moveaxis(data, 0, -1)
        return Image.fromarray(data, mode=self.pil_mode)

    def __repr__(self) -> str:
        return f"PILTarget({self.store_url!r}, {self.group_path!r}, mode={self.pil_mode!r})"
