"""Every bad input a user could pass raises a clear error before anything is written.

Each case names the rule, shows the value, names the place (result and store, or the
argument) and says what to pass instead; the store's keys and bytes are unchanged after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numcodecs
import numpy as np
import pandas as pd
import pytest
import zarr

import cpr_zarr
from cpr_zarr import (
    ChunkVerificationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNameError,
    ResultNotFoundError,
    StoreError,
    UnsupportedResultError,
)
from cpr_zarr.core.reader import ChunkReader
from cpr_zarr.core.table import read_table
from cpr_zarr.model.records import ArrayRecord
from tests.conftest import store_files

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from cpr_zarr import ResultStore, ZarrTarget

IMAGE = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
LABELS = (IMAGE % 3).astype(np.uint8)


@dataclass(frozen=True)
class Bad:
    """One bad input: what to call, the error it must raise, and a regex of its message."""

    id: str
    call: Callable[[ResultStore, ZarrTarget], Any]
    error: type[Exception]
    match: str


def save(**kwargs: Any) -> Callable[[ResultStore, ZarrTarget], Any]:
    data = kwargs.pop("data", IMAGE)
    return lambda store, image: store.save(data, "bad", **kwargs)


def labels(**kwargs: Any) -> Callable[[ResultStore, ZarrTarget], Any]:
    data = kwargs.pop("data", LABELS)
    colors = kwargs.pop("colors", None)
    return lambda store, image: store.save(
        cpr_zarr.Labels(data, image=kwargs.pop("image", image), colors=colors), "seg", **kwargs
    )


PLACE = r"result 'bad' (in|to) store '.*results\.zarr'"
CHUNKS_FIX = r"Give one positive integer per axis \(3 values\), e.g. chunks=\(4, 16, 16\)"
BAD_INPUTS = [
    # dtypes and kinds of values
    Bad(
        "longdouble",
        save(data=IMAGE.astype(np.longdouble)),
        UnsupportedResultError,
        r"result 'bad' with dtype dtype\('float128'\) \(numpy longdouble\).*x.astype\('float64'\)",
    ),
    Bad(
        "clongdouble",
        save(data=IMAGE.astype(np.clongdouble)),
        UnsupportedResultError,
        r"dtype\('complex256'\) \(numpy longdouble\).*astype\('complex128'\)",
    ),
    Bad(
        "masked-array",
        save(data=np.ma.masked_equal(IMAGE, 3)),
        UnsupportedResultError,
        rf"masked array \(numpy.ma\) as {PLACE}: 1 of 1024 values are masked.*numpy.ma.filled",
    ),
    Bad(
        "datetime64",
        save(data=np.arange(4).astype("datetime64[s]")),
        UnsupportedResultError,
        r"dtype dtype\('<M8\[s\]'\).*Convert it first",
    ),
    Bad("string", save(data="hello"), UnsupportedResultError, r"'hello'.*numpy or Dask array"),
    Bad("none", save(data=None), UnsupportedResultError, r"NoneType.*numpy.asarray"),
    # chunks
    Bad(
        "chunks-str",
        save(chunks="big"),
        InvalidArgumentTypeError,
        rf"Invalid chunks 'big' for {PLACE}.*only string is 'auto'.*{CHUNKS_FIX}",
    ),
    Bad(
        "chunks-bool",
        save(chunks=True),
        InvalidArgumentTypeError,
        rf"Invalid chunks True for {PLACE} of shape \(4, 16, 16\): a bool.*{CHUNKS_FIX}",
    ),
    Bad(
        "chunks-bool-axis",
        save(chunks=(4, True, 16)),
        InvalidArgumentTypeError,
        rf"axis 1 has True, not an integer.*{CHUNKS_FIX}",
    ),
    Bad(
        "chunks-none-axis",
        save(chunks=(4, None, 16)),
        InvalidArgumentTypeError,
        rf"axis 1 has None, not an integer.*{CHUNKS_FIX}",
    ),
    Bad("chunks-zero", save(chunks=(0, 16, 16)), InvalidArgumentError, r"axis 0 has 0; chunk"),
    Bad("chunks-negative", save(chunks=-2), InvalidArgumentError, r"axis 0 has -2; chunk"),
    Bad("chunks-fraction", save(chunks=(2.5, 16, 16)), InvalidArgumentTypeError, r"has 2.5"),
    Bad(
        "chunks-wrong-length", save(chunks=(4, 16)), InvalidArgumentError, r"2 value\(s\) for a 3-D"
    ),
    Bad("chunks-dict", save(chunks={0: 4}), InvalidArgumentTypeError, r"a dict is not a chunk"),
    Bad(
        "chunks-huge",
        save(data=da.zeros((60000, 60000), dtype=np.uint8, chunks=1000), chunks=(60000, 60000)),
        InvalidArgumentError,
        r"one chunk would hold 3,600,000,000 bytes; a chunk must stay under 2 GiB",
    ),
    # compressors
    Bad(
        "compressor-str",
        save(compressor="zstd"),
        InvalidArgumentTypeError,
        rf"Invalid compressor 'zstd' for {PLACE}: a str is not a codec.*BloscCodec\(cname=",
    ),
    Bad(
        "compressor-numcodecs-lz4",
        save(compressor=numcodecs.LZ4()),
        InvalidArgumentError,
        r"Invalid compressor LZ4\(acceleration=1\).*no zarr v3 equivalent.*BloscCodec\(cname=",
    ),
    Bad(
        "compressor-array-to-bytes",
        save(compressor=zarr.codecs.BytesCodec()),
        InvalidArgumentTypeError,
        r"not a bytes-to-bytes codec.*compressor=\[\] for no compression",
    ),
    Bad(
        "compressor-list-with-junk",
        save(compressor=[zarr.codecs.ZstdCodec(), 3]),
        InvalidArgumentTypeError,
        r"Invalid compressor 3 .*an int is not a codec|a int is not a codec",
    ),
    # NGFF metadata
    Bad(
        "scale-negative",
        save(scale=(1.0, -0.5, 0.5)),
        InvalidArgumentError,
        rf"Cannot save {PLACE}: Invalid scale \(1.0, -0.5, 0.5\): pixel sizes must be positive",
    ),
    Bad("scale-nan", save(scale=float("nan")), InvalidArgumentError, r"scale nan: pixel sizes"),
    Bad("scale-inf", save(scale=(1, 1, np.inf)), InvalidArgumentError, r"positive and finite"),
    Bad(
        "scale-str",
        save(scale="big"),
        InvalidArgumentTypeError,
        rf"Cannot save {PLACE}: Invalid scale 'big': 'big' is not a number.*scale=\(2.0, 0.65",
    ),
    Bad("scale-bool", save(scale=(True, 1, 1)), InvalidArgumentTypeError, r"True is not a number"),
    Bad(
        "scale-wrong-length",
        save(scale=(1.0, 1.0, 1.0, 1.0)),
        InvalidArgumentError,
        r"Invalid scale \(1.0, 1.0, 1.0, 1.0\) for a 3-D array: give one value per axis \(3\)",
    ),
    Bad("scale-dict", save(scale={"z": 2.0}), InvalidArgumentTypeError, r"Invalid scale \{'z'"),
    Bad("translation-inf", save(translation=np.inf), InvalidArgumentError, r"must be finite"),
    Bad("axes-duplicate", save(axes="zyy"), InvalidArgumentError, r"needs unique names"),
    Bad("axes-wrong-length", save(axes="yx"), InvalidArgumentError, r"give 3 names out of t, c"),
    Bad("axes-unknown", save(axes="abc"), InvalidArgumentError, r"Invalid axes 'abc'"),
    Bad("axes-int", save(axes=3), InvalidArgumentTypeError, r"Invalid axes 3: give a string"),
    Bad("axes-order", save(axes="yxc"), InvalidArgumentError, r"order time, channel, space"),
    Bad("units-unknown", save(units="microns"), InvalidArgumentError, r"unit 'microns'.*one of"),
    Bad("units-time-on-space", save(units="second"), InvalidArgumentError, r"unit 'second'"),
    Bad(
        "units-on-channel",
        save(axes="cyx", units=("micrometer",) * 3),
        InvalidArgumentError,
        r"unit 'micrometer' for channel axis 'c'.*channel axes have no unit",
    ),
    Bad("levels-zero", save(levels=0), InvalidArgumentError, r"Invalid levels 0"),
    Bad("levels-float", save(levels=2.0), InvalidArgumentError, r"Invalid levels 2.0"),
    Bad("levels-bool", save(levels=True), InvalidArgumentError, r"Invalid levels True"),
    Bad(
        "image-levels",
        lambda store, image: cpr_zarr.Image(IMAGE, levels=99),
        InvalidArgumentError,
        r"Invalid levels 99.*at most 10",
    ),
    Bad(
        "image-scale",
        lambda store, image: cpr_zarr.Image(IMAGE, scale=-1),
        InvalidArgumentError,
        r"Invalid scale -1: pixel sizes must be positive",
    ),
    Bad("unknown-keyword", save(sclae=2.0), InvalidArgumentTypeError, r"unknown argument.*sclae"),
    Bad("meta-on-1d", save(data=np.arange(5), units="micrometer"), InvalidArgumentError, "2-D"),
    # names
    Bad("name-slash", lambda s, i: s.save(IMAGE, "a/b"), InvalidNameError, r"'a/b'"),
    Bad("name-unicode", lambda s, i: s.save(IMAGE, "café"), InvalidNameError, r"'café'"),
    Bad("name-dotdot", lambda s, i: s.save(IMAGE, ".."), InvalidNameError, r"'\.\.'"),
    Bad("name-none", lambda s, i: s.save(IMAGE, None), InvalidNameError, r"got None"),
    # labels
    Bad(
        "colour-name",
        labels(colors={1: "red"}),
        InvalidArgumentError,
        r"Invalid colour 'red' for label 1: colour names are not supported.*'#ff0000'",
    ),
    Bad(
        "colour-floats",
        labels(colors={1: (1.0, 0.5, 0.0)}),
        InvalidArgumentTypeError,
        r"Invalid colour \(1.0, 0.5, 0.0\) for label 1.*multiply 0-1 floats by 255",
    ),
    Bad("colour-range", labels(colors={1: (300, 0, 0)}), InvalidArgumentError, r"0-255"),
    Bad("colour-key", labels(colors={"a": (1, 2, 3)}), InvalidArgumentTypeError, r"value 'a'"),
    Bad("colours-list", labels(colors=[(1, 2, 3)]), InvalidArgumentTypeError, r"must be a dict"),
    Bad(
        "labels-float",
        labels(data=LABELS.astype(np.float32)),
        UnsupportedResultError,
        r"integer arrays",
    ),
    Bad("labels-list", labels(data=[[1]]), UnsupportedResultError, r"numpy or Dask integer"),
    Bad("labels-shape", labels(data=LABELS[:, :8]), InvalidArgumentError, r"do not fit image"),
    Bad("labels-image", labels(image=IMAGE), InvalidArgumentTypeError, r"must be the image"),
    Bad(
        "labels-with-scale",
        labels(scale=(2.0, 1.0, 1.0)),
        InvalidArgumentError,
        r"Labels take their image's axes, scale.*\{'scale': \(2.0, 1.0, 1.0\)\}",
    ),
    # tables
    Bad(
        "table-object",
        save(data=pd.DataFrame({"a": pd.Series([b"x"], dtype=object)})),
        UnsupportedResultError,
        r"column 'a' of dtype object: row 0 holds b'x' of type builtins.bytes",
    ),
    Bad(
        "table-duplicate-columns",
        save(data=pd.DataFrame([[1, 2]], columns=["a", "a"])),
        UnsupportedResultError,
        r"unique and one level deep",
    ),
    Bad(
        "table-with-chunks",
        save(data=pd.DataFrame({"a": [1]}), chunks=(5,)),
        InvalidArgumentError,
        r"Cannot save table 'bad' to store .* with \{'chunks': \(5,\)\}",
    ),
    # reading and opening
    Bad("open-int", lambda s, i: s.open(3), InvalidArgumentTypeError, r"got 3 for store"),
    Bad("open-empty", lambda s, i: s.open(""), InvalidArgumentTypeError, r"non-empty str"),
    Bad("open-missing", lambda s, i: s.open("nosuch"), ResultNotFoundError, r"'nosuch'"),
    Bad(
        "read-level-str",
        lambda s, i: cpr_zarr.read_level(i, "1"),
        InvalidArgumentTypeError,
        r"Invalid level '1'.*a level is an int",
    ),
    Bad("read-level-high", lambda s, i: cpr_zarr.read_level(i, 7), IndexError, r"level 7 does"),
    Bad("read-level-negative", lambda s, i: cpr_zarr.read_level(i, -1), IndexError, r"level -1"),
    Bad(
        "read-level-not-target",
        lambda s, i: cpr_zarr.read_level(IMAGE, 1),
        InvalidArgumentTypeError,
        r"read_level takes the ZarrTarget",
    ),
    Bad("read-table-array", lambda s, i: read_table(i), InvalidArgumentTypeError, r"not a table"),
    Bad(
        "read-table-str",
        lambda s, i: read_table(i.group_path),
        InvalidArgumentTypeError,
        r"read_table takes the ZarrTarget",
    ),
    Bad(
        "store-mode",
        lambda s, i: cpr_zarr.ResultStore(s.url, mode="w"),  # type: ignore[arg-type]
        InvalidArgumentError,
        r"Invalid mode 'w'.*use 'a'",
    ),
]


@pytest.fixture
def populated(local_store: ResultStore) -> tuple[ResultStore, ZarrTarget]:
    image = local_store.save(IMAGE, "img", levels=2, chunks=(2, 8, 8))
    local_store.save(cpr_zarr.Labels(LABELS, image=image), "seg0")
    local_store.save(pd.DataFrame({"a": [1, 2]}), "table")
    return local_store, image


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.id for b in BAD_INPUTS])
def test_bad_input_raises_clearly_before_writing(
    populated: tuple[ResultStore, ZarrTarget], bad: Bad
) -> None:
    store, image = populated
    before = store_files(store)
    with pytest.raises(bad.error, match=bad.match) as info:
        bad.call(store, image)
    assert isinstance(info.value, (cpr_zarr.CprZarrError, IndexError))
    assert store_files(store) == before


def test_chunks_auto_and_whole_axis_are_supported(local_store: ResultStore) -> None:
    auto = local_store.save(IMAGE, "img", chunks="auto")
    assert auto.chunks == (4, 16, 16)
    assert local_store.save(IMAGE, "img", chunks=None) == auto
    whole = local_store.save(IMAGE, "img", chunks=(1, -1, 8))
    assert whole.chunks == (1, 16, 8)
    np.testing.assert_array_equal(whole.to_numpy(), IMAGE)


def test_numcodecs_compressors_become_their_zarr_v3_codecs(local_store: ResultStore) -> None:
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    cases = [
        (numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE), BloscCodec),
        (numcodecs.Blosc(), BloscCodec),
        (numcodecs.Zstd(level=4), ZstdCodec),
        (numcodecs.GZip(level=2), GzipCodec),
    ]
    for i, (codec, kind) in enumerate(cases):
        data = IMAGE + i  # new content each time, so each is written with its codec
        target = local_store.save(data, f"c{i}", compressor=codec)
        (stored,) = target.zarr_array().compressors
        assert isinstance(stored, kind)
        np.testing.assert_array_equal(target.to_numpy(), data)
    first = local_store.open("c0").zarr_array().compressors[0]
    assert (first.cname.value, first.clevel, first.shuffle.value) == ("lz4", 5, "bitshuffle")


def test_label_colours_as_hex_strings(local_store: ResultStore) -> None:
    image = local_store.save(IMAGE, "img")
    seg = local_store.save(
        cpr_zarr.Labels(LABELS, image=image, colors={1: "#ff0000", 2: "#00ff0080"}), "seg"
    )
    doc = json.loads((local_store.storage.root / seg.group_path / "zarr.json").read_text())  # type: ignore[operator]
    assert doc["attributes"]["ome"]["image-label"]["colors"] == [
        {"label-value": 1, "rgba": [255, 0, 0, 255]},
        {"label-value": 2, "rgba": [0, 255, 0, 128]},
    ]


# -- damaged documents: named as damaged, never as absent or as a bare codec error --------


def test_a_corrupt_root_document_is_reported_as_corrupt(tmp_path: Path) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    root = tmp_path / "results.zarr" / "zarr.json"
    for damage in (b'{"zarr_format": 3, "node_ty', b"", b"[1, 2]"):
        root.write_bytes(damage)
        for mode in ("r", "a"):
            with pytest.raises(StoreError, match=r"root zarr.json of result store .* is corrupt"):
                cpr_zarr.ResultStore(store.url, mode=mode)  # type: ignore[arg-type]
        assert root.read_bytes() == damage  # never "repaired" by creating a new root


def test_a_damaged_table_names_store_group_and_column(
    local_store: ResultStore,
) -> None:
    df = pd.DataFrame({"name": ["alpha", "beta", "gamma"] * 20, "x": np.arange(60.0)})
    target = local_store.save(df, "t")
    # a valid parquet file that holds other values: only the recorded digests can tell
    changed = df.copy()
    changed.loc[3, "x"] = 99.0
    changed.to_parquet(local_store.storage.root / target.group_path / "table.parquet")  # type: ignore[operator]
    with pytest.raises(ChunkVerificationError) as info:
        read_table(target)
    message = str(info.value)
    assert f"column 'x' (array 'c1/values') of table {target.group_path!r}" in message
    assert local_store.url in message
    assert info.value.group_path == target.group_path


def test_a_damaged_digest_list_is_an_integrity_error_not_an_index_error(
    tmp_path: Path,
) -> None:
    """Layout 1 (digests listed in the record): a store written before layout 2."""
    import shutil
    from pathlib import Path as _Path

    data = _Path(__file__).parent / "data" / "layout-1"
    shutil.copytree(data / "results.zarr", tmp_path / "results.zarr")
    expected = json.loads((data / "expected.json").read_text())
    fresh = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    marker = tmp_path / "results.zarr" / expected["image"] / "zarr.json"
    doc = json.loads(marker.read_text())
    del doc["attributes"]["cpr_zarr"]["chunk_digests"][-1]
    marker.write_text(json.dumps(doc))
    # caught when opening, by the record check (the digests no longer hash to the content
    # hash); the reader's own digest-list check is the second line behind it
    with pytest.raises(cpr_zarr.IntegrityError, match="chunk_digests"):
        fresh.open(expected["image"]).to_numpy()
    record = ArrayRecord.from_dict(json.loads(marker.read_text())["attributes"]["cpr_zarr"])
    with pytest.raises(ChunkVerificationError, match=r"chunk_digests \(17 entries\) must list"):
        ChunkReader(fresh.storage, expected["image"], record).to_numpy()
