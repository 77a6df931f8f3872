"""Same content, different codecs, saved at once on S3 through obstore: one conditional PUT
decides which array metadata (and so which codecs) the result has.

With s3fs the create-if-absent of the array metadata is a HEAD then a PUT, so two writers
starting within milliseconds can both "create" it and leave chunks in two codecs (the README
documents that race); obstore sends one PUT with ``If-None-Match: *`` and the server refuses
every writer but one (412), which then encodes its chunks with the winner's codecs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import cpr_zarr
from tests.conftest import microscopy_volume

if TYPE_CHECKING:
    from tests.s3_server import S3Server

COMPRESSORS: list[Any] = [
    BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
    GzipCodec(level=1),
    ZstdCodec(level=3),
    BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
]
WRITERS = 8
CHUNKS = (10, 32, 40)  # 4 x 3 x 2 chunks


def _same_codec(stored: dict[str, Any], given: dict[str, Any]) -> bool:
    """Whether stored codec metadata is ``given`` (zarr fills in Blosc's typesize)."""
    conf = {k: v for k, v in stored["configuration"].items() if k != "typesize"}
    want = {k: v for k, v in given["configuration"].items() if k != "typesize"}
    return bool(stored["name"] == given["name"] and conf == want)


def _race(url: str, data: np.ndarray) -> list[cpr_zarr.ZarrTarget]:
    """WRITERS threads, each with its own store (own obstore client), released at once."""
    stores = [cpr_zarr.ResultStore(url, backend="obstore") for _ in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)
    results: list[Any] = [None] * WRITERS

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = stores[i].save(
                data, name="img", chunks=CHUNKS, compressor=COMPRESSORS[i % 4], levels=1
            )
        except Exception as exc:  # reported below with the writer's number
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def test_same_content_other_codecs_one_conditional_write_decides(
    s3_server: S3Server, s3_url: str
) -> None:
    refused = 0
    for round_ in range(3):
        url = s3_url.replace("/results.zarr", f"/round{round_}.zarr")
        data = microscopy_volume((40, 96, 80), seed=round_)
        cpr_zarr.ResultStore(url, backend="obstore")
        s3_server.proxy.reset_counts()
        targets = _race(url, data)
        assert len(set(targets)) == 1  # every writer got an equal target
        target = targets[0]

        # the array metadata was created by exactly one PUT; every other writer that tried
        # was refused by the server, none overwrote it
        key = f"{target.group_path}/0/zarr.json"
        statuses = s3_server.proxy.status_counts("PUT", key)
        assert statuses[200] == 1, statuses
        assert set(statuses) <= {200, 412}, statuses
        assert s3_server.proxy.count("HEAD", key) == 0  # no check-then-write
        refused += statuses[412]

        # every chunk decodes with the winning codecs and the result verifies
        store = cpr_zarr.ResultStore(url, backend="obstore", mode="r")
        array = zarr.open_array(store.storage.zarr_store, path=f"{target.group_path}/0", mode="r")
        (winner,) = array.metadata.to_dict()["codecs"][1:]  # after the bytes codec
        assert any(_same_codec(winner, c.to_dict()) for c in COMPRESSORS), winner
        grid = [range(-(-s // c)) for s, c in zip(data.shape, CHUNKS, strict=True)]
        for index in np.ndindex(*(len(g) for g in grid)):
            region = tuple(
                slice(i * c, min((i + 1) * c, s))
                for i, c, s in zip(index, CHUNKS, data.shape, strict=True)
            )
            np.testing.assert_array_equal(array[region], data[region])
        np.testing.assert_array_equal(store.open(target.content_hash).to_numpy(), data)
        report = store.verify()
        assert report.ok, report
    assert refused > 0  # writers did race for the metadata: the server refused some
