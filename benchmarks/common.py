"""Shared pieces of the benchmark suite: sizes, test data, codec, scratch folders.

Sizes come from ``CPR_ZARR_BENCH_SIZE``:

=======  ===========================  ===========================  ==============
size     "small" volume               "large" volume               chunks
=======  ===========================  ===========================  ==============
full     128 x 512 x 512 (64 MiB)     512 x 1024 x 1024 (1 GiB)    64 x 256 x 256
small    64 x 256 x 256 (8 MiB)       128 x 512 x 512 (64 MiB)     64 x 256 x 256
tiny     16 x 64 x 64 (128 KiB)       32 x 128 x 128 (1 MiB)       8 x 32 x 32
=======  ===========================  ===========================  ==============

``full`` (the default) uses cpr_zarr's default chunk shape for big uint16 stacks
(about 8 MiB per chunk); ``tiny`` uses small chunks so every code path still sees many
chunks. Baselines always get exactly the same data, chunks and codec as cpr_zarr.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

# Measure the cpr_zarr of the checkout these benchmarks live in, whatever the virtualenv has
# installed: asv drops PYTHONPATH, and with --python=same an editable install may point at
# another working tree, so results recorded under a commit hash would not be that commit's.
_REPO = Path(__file__).resolve().parents[1]
if (_REPO / "cpr_zarr" / "__init__.py").exists() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

# Prefect reads its settings when it is first imported (cpr_zarr imports it): point it at
# a throwaway home and keep it quiet before that happens.
_SCRATCH_ROOT = Path(os.environ.get("CPR_ZARR_BENCH_TMP", tempfile.gettempdir()))
os.environ.setdefault("PREFECT_HOME", str(_SCRATCH_ROOT / "cpr-zarr-bench-prefect-home"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")

import numpy as np  # noqa: E402
from zarr.codecs import BloscCodec  # noqa: E402

SIZE_ENV = "CPR_ZARR_BENCH_SIZE"
_SIZES = {
    "full": {
        "small": (128, 512, 512),
        "large": (512, 1024, 1024),
        "chunks": (64, 256, 256),
    },
    "small": {
        "small": (64, 256, 256),
        "large": (128, 512, 512),
        "chunks": (64, 256, 256),
    },
    "tiny": {
        "small": (16, 64, 64),
        "large": (32, 128, 128),
        "chunks": (8, 32, 32),
    },
}
DTYPE = np.dtype("uint16")


def size_mode() -> str:
    mode = os.environ.get(SIZE_ENV, "full").strip().lower() or "full"
    if mode not in _SIZES:
        raise ValueError(f"{SIZE_ENV}={mode!r}: use one of {sorted(_SIZES)}.")
    return mode


def shape_of(size: str) -> tuple[int, int, int]:
    """Shape of the ``"small"`` or ``"large"`` volume in the current size mode."""
    return _SIZES[size_mode()][size]


def chunks() -> tuple[int, int, int]:
    return _SIZES[size_mode()]["chunks"]


def codec() -> BloscCodec:
    """cpr_zarr's default codec, spelled out so baselines use exactly the same one."""
    return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


def nbytes(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * DTYPE.itemsize


# -- test data ------------------------------------------------------------------------------


def _blob_block(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth "nuclei": Gaussian blobs of a few voxels radius, 0..~900 above background."""
    import scipy.ndimage as ndi

    spots = np.zeros(shape, dtype=np.float32)
    n = max(4, int(np.prod(shape) // 40_000))  # about one nucleus per 34^3 voxels
    idx = tuple(rng.integers(0, s, n) for s in shape)
    spots[idx] = rng.uniform(0.5, 1.0, n)
    sigma = (2.0, 5.0, 5.0)  # anisotropic, like a confocal stack
    blobs = ndi.gaussian_filter(spots, sigma, mode="wrap")
    blobs *= 900.0 / max(float(blobs.max()), 1e-6)
    return blobs


def microscopy_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """uint16 blobs on a noisy background (mean 100, sd 5), not constant, not pure noise.

    Like ``tests/conftest.py::microscopy_volume`` but fast at 1 GiB: one blob field of at
    most 64 x 256 x 256 voxels is generated and tiled with a random circular shift per tile
    (so tiles differ), and fresh Gaussian noise is drawn for every voxel.
    """
    rng = np.random.default_rng(seed)
    tile = tuple(min(s, t) for s, t in zip(shape, (64, 256, 256), strict=True))
    blobs = _blob_block(tile, rng)
    out = np.empty(shape, dtype=DTYPE)
    for z in range(0, shape[0], tile[0]):
        # noise for one slab of tiles at a time keeps the float32 scratch small
        slab = out[z : z + tile[0]]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= 5.0
        noise += 100.0
        for y in range(0, shape[1], tile[1]):
            for x in range(0, shape[2], tile[2]):
                shifted = np.roll(
                    blobs, tuple(int(v) for v in rng.integers(0, tile)), axis=(0, 1, 2)
                )
                region = noise[:, y : y + tile[1], x : x + tile[2]]
                region += shifted[: region.shape[0], : region.shape[1], : region.shape[2]]
        np.clip(noise, 0, 65535, out=noise)
        slab[...] = noise  # float32 -> uint16 (truncates, like a camera's ADC)
    return out


def cached_volume(size: str, folder: str | os.PathLike[str]) -> Path:
    """Generate the volume once into ``folder`` as .npy (read back in each benchmark's setup)."""
    path = Path(folder) / f"volume-{size_mode()}-{size}.npy"
    if not path.exists():
        np.save(path, microscopy_volume(shape_of(size)))
    return path.resolve()


def load_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a cached volume fully into memory (not memory-mapped: every writer gets RAM data)."""
    return np.load(path)


# -- scratch folders ------------------------------------------------------------------------


def scratch_dir(prefix: str) -> Path:
    """A new empty folder for one benchmark's output; remove it with :func:`remove`."""
    _SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"cpr-zarr-bench-{prefix}-", dir=_SCRATCH_ROOT))


def fresh_path(folder: Path, stem: str) -> Path:
    """A path in ``folder`` that does not exist yet (each timed call writes somewhere new)."""
    return folder / f"{stem}-{uuid.uuid4().hex[:12]}"


def remove(path: str | os.PathLike[str] | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk (file sizes) under a folder, or of one file."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- the machine's ceiling: the same chunks, encoded/decoded on all cores, as plain files -----


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _blosc():
    """The numcodecs Blosc behind :func:`codec` (zstd-1, byte shuffle; typesize from the data)."""
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)


def _grid(shape: tuple[int, ...], chunk_shape: tuple[int, ...]):
    counts = [-(-s // c) for s, c in zip(shape, chunk_shape, strict=True)]
    for index in np.ndindex(*counts):
        region = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(index, chunk_shape, shape, strict=True)
        )
        yield index, region


def ceiling_save(data: np.ndarray, chunk_shape: tuple[int, ...], folder: Path) -> Path:
    """Encode every chunk of ``data`` with the same codec on all cores, each written as a file.

    What any chunked writer has to do at least: copy the chunk out of the array
    (``np.ascontiguousarray``), Blosc it, write ``folder/c/i/j/k`` (zarr's key layout). No
    hashing, no atomic rename, no metadata, edge chunks not padded. One thread per core.
    """
    from concurrent.futures import ThreadPoolExecutor

    blosc = _blosc()
    root = folder / f"ceiling-{uuid.uuid4().hex[:12]}"

    def one(item):
        index, region = item
        encoded = blosc.encode(np.ascontiguousarray(data[region]))
        path = root.joinpath("c", *map(str, index))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(encoded)

    with ThreadPoolExecutor(_cores()) as pool:
        list(pool.map(one, _grid(data.shape, chunk_shape)))
    return root


def ceiling_read(
    array_folder: str | os.PathLike[str],
    shape: tuple[int, ...],
    chunk_shape: tuple[int, ...],
    dtype: np.dtype = DTYPE,
) -> np.ndarray:
    """Read the chunk files of a stored array and decode them on all cores into one array.

    What any reader of these files has to do at least: read each file, Blosc-decode it (into
    a buffer reused by its thread) and copy it into the output. No hashing. One thread per
    core.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    blosc = _blosc()
    root = Path(array_folder)
    out = np.empty(shape, dtype=dtype)
    local = threading.local()

    def one(item):
        index, region = item
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty(chunk_shape, dtype=dtype)
        with open(root.joinpath("c", *map(str, index)), "rb") as f:
            blosc.decode(f.read(), out=buf)
        out[region] = buf[tuple(slice(0, r.stop - r.start) for r in region)]

    with ThreadPoolExecutor(_cores()) as pool:
        list(pool.map(one, _grid(shape, chunk_shape)))
    return out


def interleaved_ratio(
    numerator, denominator, *, cleanup=None, budget_seconds: float = 60.0, pairs: int = 15
) -> float:
    """median time of ``numerator()`` / median time of ``denominator()``, the two called
    alternately in one process (the order flipped every pair): a ratio free of the drift
    between separate asv batches on a shared or virtual machine. ``cleanup(result)`` runs
    after each call, outside the timing (e.g. removes what a save wrote)."""
    import statistics
    import time

    times: dict[int, list[float]] = {0: [], 1: []}
    fns = (numerator, denominator)
    start = time.perf_counter()
    for i in range(pairs):
        for which in (0, 1) if i % 2 else (1, 0):
            t0 = time.perf_counter()
            result = fns[which]()
            times[which].append(time.perf_counter() - t0)
            if cleanup is not None:
                cleanup(result)
            del result
        if time.perf_counter() - start > budget_seconds and i >= 2:
            break
    return statistics.median(times[0]) / statistics.median(times[1])
