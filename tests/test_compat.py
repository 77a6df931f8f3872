"""A store, Prefect result records and pickles written by release 0.1 load with this version.

The fixtures in ``tests/data/release-0.1/`` were written by the previous release (commit
``eec068e``, before the package was re-laid-out) with ``tests/data/make_release_0_1.py``.
The store was written at a fixed absolute path, which the records and pickles name: the
test copies it elsewhere and points the JSON records there (the URL is data in a record;
the format around it is what is tested). Pickles are unpickled as written.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import cpr_zarr
from cpr_zarr.core import catalog
from cpr_zarr.model.records import (
    ArrayRecord,
    ProvenanceRecord,
    ResultDocument,
    StoreRoot,
    TableRecord,
    record_digest,
)

DATA = Path(__file__).parent / "data" / "release-0.1"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
OLD_URL: str = EXPECTED["store"]


@pytest.fixture
def old_store(tmp_path: Path) -> cpr_zarr.ResultStore:
    """A copy of the release-0.1 store, opened read-only by this version."""
    shutil.copytree(DATA / "results.zarr", tmp_path / "results.zarr")
    return cpr_zarr.ResultStore(tmp_path / "results.zarr", mode="r")


def moved(pointer: dict[str, Any], store: cpr_zarr.ResultStore) -> dict[str, Any]:
    return {**pointer, "store_url": store.url}


def test_the_fixtures_were_written_by_release_0_1() -> None:
    assert EXPECTED["version"] == "0.1.0"
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 300_000


def test_the_store_opens_verifies_and_reads_the_same_values(
    old_store: cpr_zarr.ResultStore,
) -> None:
    report = old_store.verify()
    assert report.ok, report.problems
    paths = sorted(t.group_path for t in old_store.targets())
    for key in ("image", "label_image", "table", "vector", "smooth", "plain_pointer"):
        assert EXPECTED[key]["group_path"] in paths
    assert report.results == len(paths) >= 10
    assert old_store.damaged() == []

    image = old_store.open(EXPECTED["image"]["group_path"])
    assert image.to_dict() == moved(EXPECTED["image"], old_store)
    np.testing.assert_array_equal(image.to_numpy(), np.array(EXPECTED["image_values"]))
    record = catalog.load(old_store.storage, image.group_path)
    assert isinstance(record, ArrayRecord)
    assert record.image is not None
    assert record.image.axes == ("z", "y", "x")
    assert record.image.scale == (2.0, 0.5, 0.5)
    assert record.image.units == ("micrometer",) * 3
    assert len(record.levels) == EXPECTED["levels"] == 2
    for number, level in enumerate(record.levels, start=1):
        values = cpr_zarr.read_level(image, number).compute()
        assert values.shape == level.shape
    assert record.record_digest is not None

    labels = old_store.open(EXPECTED["label_image"]["group_path"])
    label_record = catalog.load(old_store.storage, labels.group_path)
    assert isinstance(label_record, ArrayRecord)
    assert label_record.labels_of == image.group_path
    np.testing.assert_array_equal(labels.to_numpy(), np.array(EXPECTED["label_values"]))

    table = old_store.open(EXPECTED["table"]["group_path"])
    assert isinstance(catalog.load(old_store.storage, table.group_path), TableRecord)
    frame = cpr_zarr.read_table(table)
    assert frame.to_csv() == EXPECTED["table_csv"]
    assert str(frame["kind"].dtype) == "category"
    assert str(frame["count"].dtype) == "Int64"
    assert frame.index.name == "cell"
    assert frame["misc"].tolist() == [None, 1, "two"]


def test_provenance_and_lineage_of_the_old_store(old_store: cpr_zarr.ResultStore) -> None:
    image = old_store.open(EXPECTED["image"]["group_path"])
    smooth = old_store.open(EXPECTED["smooth"]["group_path"])
    (direct,) = [r for r in old_store.provenance(image) if r.get("task_name") is None]
    assert direct["note"] == "direct save of release 0.1"  # a user's field, kept
    (task,) = old_store.provenance(smooth)
    assert task["task_name"] == "smooth"
    assert task["inputs"] == [image.content_hash]
    assert task["parameters"]["sigma"] == 1.5
    typed = cpr_zarr.core.provenance.read_provenance(old_store.storage, smooth.group_path)
    assert typed[0].task_name == "smooth"
    assert typed[0].to_dict() == task
    assert [t.group_path for t in old_store.lineage(smooth)["inputs"]] == [image.group_path]
    frame = old_store.list()
    assert set(frame["kind"]) == {"array", "table"}
    assert (frame["records"] >= 1).all()


def _marker_documents(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("zarr.json")
        if json.loads(p.read_text()).get("attributes", {}).get("cpr_zarr", {}).get("kind")
    )


def test_every_old_record_comes_back_byte_for_byte(old_store: cpr_zarr.ResultStore) -> None:
    """to_dict(from_dict(doc)) is the stored document: keys, order and values, so record
    digests still verify and repaired markers equal the lost ones."""
    root = DATA / "results.zarr"
    markers = _marker_documents(root)
    assert len(markers) >= 10
    for path in markers:
        raw = path.read_text()
        doc = json.loads(raw)
        document = ResultDocument.from_dict(doc)
        assert json.dumps(document.to_dict(), indent=2) == raw, path
        assert document.record.record_digest == record_digest(doc["attributes"])
        assert document.sealed() == document
        copy = json.loads((path.parent / "cpr_zarr_record" / "zarr.json").read_text())
        assert copy["attributes"]["cpr_zarr_record"] == doc
    kinds = {ResultDocument.from_dict(json.loads(p.read_text())).record.kind for p in markers}
    assert kinds == {"array", "table"}
    root_doc = json.loads((root / "zarr.json").read_text())
    assert StoreRoot.from_dict(root_doc["attributes"]["cpr_zarr"]).document() == root_doc
    provenance = [p for p in root.rglob("provenance/*/zarr.json") if p.parent.name != "provenance"]
    assert len(provenance) >= 10
    for path in provenance:
        stored = json.loads(path.read_text())["attributes"]["cpr_zarr_provenance"]
        assert ProvenanceRecord.from_dict(stored).to_dict() == stored
        assert list(ProvenanceRecord.from_dict(stored).to_dict()) == list(stored)


def _deserialize(path: Path, store: cpr_zarr.ResultStore | None) -> Any:
    from prefect.results import ResultRecord

    data = path.read_bytes()
    if store is not None:  # the store moved: so does the URL its pointers name
        data = data.replace(OLD_URL.encode(), store.url.encode())
    return ResultRecord.deserialize(data).result


def test_prefect_records_load_as_working_targets(old_store: cpr_zarr.ResultStore) -> None:
    from cpr_zarr.target import PILTarget

    results = [_deserialize(p, old_store) for p in sorted((DATA / "records").iterdir())]
    assert len(results) == 4
    by_kind: dict[str, Any] = {}
    for value in results:
        if isinstance(value, dict):
            by_kind["split"] = value
        elif isinstance(value, tuple) and isinstance(value[0], PILTarget):
            by_kind["thumbnail"] = value
        elif isinstance(value, tuple):
            by_kind["measure"] = value
        else:
            by_kind["smooth"] = value
    smooth = by_kind["smooth"]
    assert type(smooth) is cpr_zarr.ZarrTarget
    assert smooth.to_dict() == moved(EXPECTED["smooth"], old_store)
    image = np.array(EXPECTED["image_values"])
    np.testing.assert_array_equal(smooth.to_numpy(), (image.astype(np.float32) * 0.5))

    array, table, mean = by_kind["measure"]
    assert [array.to_dict(), table.to_dict(), mean] == [
        moved(EXPECTED["measure"][0], old_store),
        moved(EXPECTED["measure"][1], old_store),
        EXPECTED["measure"][2],
    ]
    assert cpr_zarr.read_table(table).shape == (4, 2)
    np.testing.assert_array_equal(array.to_numpy(), smooth.to_numpy()[0])

    split = by_kind["split"]
    assert {k: v.to_dict() for k, v in split.items()} == {
        k: moved(v, old_store) for k, v in EXPECTED["split"].items()
    }
    np.testing.assert_array_equal(split["bottom"].to_numpy(), image[2:])

    rgb, gray = by_kind["thumbnail"]
    assert [rgb.pil_mode, gray.pil_mode] == EXPECTED["thumbnail_modes"] == ["RGB", "L"]
    assert rgb.to_dict() == moved(EXPECTED["thumbnail"][0], old_store)
    picture = rgb.to_pil()
    assert picture.mode == "RGB"
    assert picture.size == (12, 8)
    assert np.asarray(picture)[3, 4].tolist() == [80, 200, 0]


def test_gc_finds_what_old_prefect_records_reference() -> None:
    """``gc --keep-referenced`` reads old JSON and pickled records without unpickling."""
    from cpr_zarr.core.inventory import referenced_hashes

    found = referenced_hashes(DATA / "records")
    assert EXPECTED["smooth"]["content_hash"] in found
    assert EXPECTED["thumbnail"][0]["content_hash"] in found
    assert EXPECTED["plain_pointer"]["content_hash"] in referenced_hashes(DATA / "pickled-records")


def test_a_pickled_prefect_record_and_pickles_load_unchanged(
    old_store: cpr_zarr.ResultStore,
) -> None:
    from cpr_zarr.target import PILTarget

    (path,) = (DATA / "pickled-records").iterdir()
    target = _deserialize(path, None)  # a pickle: no I/O, the URL as written
    assert type(target) is cpr_zarr.ZarrTarget
    assert target.to_dict() == EXPECTED["plain_pointer"] == EXPECTED["vector"]
    here = dataclasses.replace(target, store_url=old_store.url)
    np.testing.assert_array_equal(here.to_numpy(), np.arange(10, dtype="float32"))

    image = pickle.loads((DATA / "pickles" / "zarr_target.pkl").read_bytes())
    assert type(image) is cpr_zarr.ZarrTarget
    assert image.to_dict() == EXPECTED["image"]
    rgb = pickle.loads((DATA / "pickles" / "pil_target.pkl").read_bytes())
    assert type(rgb) is PILTarget
    assert rgb.pil_mode == "RGB"
    assert rgb.to_dict() == EXPECTED["thumbnail"][0]

    integrity, chunk, missing = pickle.loads((DATA / "pickles" / "errors.pkl").read_bytes())
    assert type(integrity) is cpr_zarr.IntegrityError
    assert (integrity.store_url, integrity.field) == (OLD_URL, "f")
    assert type(chunk) is cpr_zarr.ChunkVerificationError
    assert chunk.chunk_index == (1, 2)
    assert type(missing) is cpr_zarr.ResultNotFoundError
    assert str(missing) == "no such result"


# every dotted name a stored record or a pickle of release 0.1 refers to
STORED_NAMES = [
    "cpr_zarr.serializer.dumps",  # jsonlib of pointer_serializer(): Prefect imports it by name
    "cpr_zarr.serializer.loads",
    "cpr_zarr.serializer.encode_object",
    "cpr_zarr.serializer.decode_object",
    "cpr_zarr.serializer.pointer_serializer",
    "cpr_zarr.target.ZarrTarget",
    "cpr_zarr.target.PILTarget",
    "cpr_zarr.errors.IntegrityError",
    "cpr_zarr.errors.ChunkVerificationError",
    "cpr_zarr.errors.ResultNotFoundError",
    "cpr_zarr.errors._rebuild_integrity_error",
    "cpr_zarr.errors._rebuild_chunk_error",
    "cpr_zarr.store.open_store",  # ResultStore.__reduce__
    "cpr_zarr.store.ResultStore",
]


def _pickled_names(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle refers to."""
    import pickletools

    names, strings = set(), []
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
    return names


@pytest.mark.parametrize("dotted", STORED_NAMES)
def test_names_stored_records_and_pickles_refer_to_stay_importable(dotted: str) -> None:
    module, _, name = dotted.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_the_fixture_pickles_name_only_listed_paths() -> None:
    """If a pickle of release 0.1 names a path, it is in STORED_NAMES (so it stays importable)."""
    import base64

    found: set[str] = set()
    for path in (DATA / "pickles").iterdir():
        found |= _pickled_names(path.read_bytes())
    (record,) = (DATA / "pickled-records").iterdir()
    found |= _pickled_names(base64.b64decode(json.loads(record.read_bytes())["result"]))
    for path in (DATA / "records").iterdir():
        serializer = json.loads(path.read_bytes())["metadata"]["serializer"]
        found |= {serializer[k] for k in ("object_encoder", "object_decoder")}
        found.add(f"{serializer['jsonlib']}.dumps")
    ours = {n for n in found if n.startswith("cpr_zarr")}
    assert ours
    assert ours <= set(STORED_NAMES), ours - set(STORED_NAMES)


def test_a_zarr_reader_still_reads_the_old_store() -> None:
    group = zarr.open_group(str(DATA / "results.zarr"), mode="r")
    assert group.attrs["cpr_zarr"] == {"store_layout": 1}
    array = zarr.open_array(
        str(DATA / "results.zarr"), path=f"{EXPECTED['vector']['group_path']}/0"
    )
    np.testing.assert_array_equal(array[:], np.arange(10, dtype="float32"))


# -- layout 1 (written by 78d981f, before layout 2), see tests/data/make_layout_1.py --------

LAYOUT_1 = Path(__file__).parent / "data" / "layout-1"
LAYOUT_1_EXPECTED: dict[str, Any] = json.loads((LAYOUT_1 / "expected.json").read_text())


@pytest.fixture
def layout_1_store(tmp_path: Path) -> cpr_zarr.ResultStore:
    shutil.copytree(LAYOUT_1 / "results.zarr", tmp_path / "results.zarr")
    return cpr_zarr.ResultStore(tmp_path / "results.zarr")


def test_a_layout_1_store_opens_verifies_lists_and_gcs(
    layout_1_store: cpr_zarr.ResultStore,
) -> None:
    from cpr_zarr.core.inventory import plan_gc

    store, want = layout_1_store, LAYOUT_1_EXPECTED
    report = store.verify()
    assert report.ok, report.problems
    assert report.results == 4
    image = store.open(want["image"])
    record = catalog.load(store.storage, image.group_path)
    assert isinstance(record, ArrayRecord)
    assert record.layout == 1
    assert record.chunk_digests is not None
    assert record.digest_root is None
    np.testing.assert_array_equal(image.to_numpy(), np.array(want["image_values"]))
    for number in (1, 2):
        assert cpr_zarr.read_level(image, number).compute().shape == record.levels[number - 1].shape
    labels = store.open(want["label_image"])
    np.testing.assert_array_equal(labels.to_numpy(), np.array(want["label_values"]))
    assert cpr_zarr.read_table(store.open(want["table"]))["b"].tolist() == ["x", "y", "z"]
    frame = store.list()
    assert sorted(frame["group_path"]) == sorted(
        want[k] for k in ("image", "label_image", "vector", "table")
    )
    (direct,) = store.provenance(image)
    assert direct["note"] == "layout 1"
    # nothing of a committed layout-1 result is a leftover to gc
    assert plan_gc(store.storage, leftover_age=0) == []
    # a layout-1 result is removed whole (its record copy first)
    store.delete(want["vector"])
    assert not (Path(store.url) / want["vector"]).exists()
    assert store.verify().ok


def test_a_layout_1_store_takes_layout_2_results_and_repairs_both(
    layout_1_store: cpr_zarr.ResultStore,
) -> None:
    """New saves into an old store write layout 2 only (same values: another content hash,
    as the layout is hashed); a lost marker of either layout is rebuilt from its copy."""
    store, want = layout_1_store, LAYOUT_1_EXPECTED
    root = Path(store.url)
    again = store.save(np.array(want["image_values"], dtype=np.uint16), "volume", chunks=(2, 8, 8))
    assert again.group_path != want["image"]
    assert catalog.load(store.storage, again.group_path).layout == 2  # type: ignore[union-attr]
    assert (root / again.group_path / "cpr_zarr" / "record.json").is_file()
    assert not (root / again.group_path / "cpr_zarr_record").exists()
    assert not (root / again.group_path / "provenance").exists()
    assert len(store.provenance(again)) == 1
    old_marker = root / want["image"] / "zarr.json"
    new_marker = root / again.group_path / "zarr.json"
    old_doc, new_doc = old_marker.read_text(), new_marker.read_text()
    old_marker.write_text("{}")
    new_marker.write_text("{}")
    fresh = cpr_zarr.ResultStore(root)
    report = fresh.verify(repair=True)
    assert report.ok, report.problems
    assert len(report.repaired) == 2
    assert json.loads(old_marker.read_text()) == json.loads(old_doc)
    assert json.loads(new_marker.read_text()) == json.loads(new_doc)
    assert (root / want["image"] / "cpr_zarr_record" / "zarr.json").is_file()
    np.testing.assert_array_equal(
        fresh.open(again.group_path).to_numpy(), fresh.open(want["image"]).to_numpy()
    )
