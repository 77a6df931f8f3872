"""Typed records (:mod:`cpr_zarr.model.records`): exact round trips, clear errors, one place.

Every document cpr_zarr stores is written and read through one typed, versioned record;
``to_dict`` gives back exactly what was stored, so record digests keep verifying.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cpr_zarr
from cpr_zarr.cli import main
from cpr_zarr.core import catalog
from cpr_zarr.errors import IntegrityError, RecordError
from cpr_zarr.model.records import (
    ArrayRecord,
    LevelArrayAttrs,
    LevelRecord,
    ProvenanceRecord,
    ResultDocument,
    StoreRoot,
    TableRecord,
    TableSchema,
    parse_result_record,
    record_digest,
)

PACKAGE = Path(cpr_zarr.__file__).parent


def pil_image(store: cpr_zarr.ResultStore) -> cpr_zarr.ZarrTarget:
    """A PIL image stored the way ``cpr_zarr.task`` stores one (channels first, axes cyx)."""
    from PIL import Image

    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[..., 2] = 90
    array = np.ascontiguousarray(np.moveaxis(np.asarray(Image.fromarray(rgb, "RGB")), -1, 0))
    return store.save(cpr_zarr.Image(array, axes="cyx"), "thumbnail")


@pytest.fixture
def every_kind(local_store: cpr_zarr.ResultStore) -> dict[str, cpr_zarr.ZarrTarget]:
    store = local_store
    rng = np.random.default_rng(3)
    image = store.save(
        rng.integers(0, 500, (3, 40, 36), dtype=np.uint16),
        "image",
        chunks=(2, 16, 16),
        scale=(3.0, 0.5, 0.5),
        units="micrometer",
        levels=3,
    )
    labels = store.save(
        cpr_zarr.Labels(rng.integers(0, 4, (3, 40, 36), dtype=np.uint8), image=image), "cells"
    )
    frame = pd.DataFrame(
        {
            "n": np.arange(3, dtype="int16"),
            "kind": pd.Categorical(["a", "b", "a"], ordered=True),
            "text": ["x", None, "z"],
            "count": pd.array([1, None, 2], dtype="Int64"),
        },
        index=pd.MultiIndex.from_tuples([(1, "a"), (1, "b"), (2, "a")], names=["k", None]),
    )
    return {
        "image": image,
        "labels": labels,
        "table": store.save(frame, "table"),
        "empty_table": store.save(pd.DataFrame(), "nothing"),
        "feature_table": store.save(
            cpr_zarr.Table(
                pd.DataFrame({"area": [4.0, 2.5]}, index=pd.Index([1, 3], name="label")),
                labels=labels,
            ),
            "features",
        ),
        "pil": pil_image(store),
        "vector": store.save(np.linspace(0, 1, 7), "vector"),
        "empty": store.save(np.zeros((0, 4), dtype=np.float32), "empty"),
    }


def marker(target: cpr_zarr.ZarrTarget) -> tuple[str, dict[str, Any]]:
    path = Path(target.store_url) / target.group_path / "zarr.json"
    raw = path.read_text()
    return raw, json.loads(raw)


def test_records_written_now_come_back_exactly(every_kind: dict[str, cpr_zarr.ZarrTarget]) -> None:
    for key, target in every_kind.items():
        raw, doc = marker(target)
        document = ResultDocument.from_dict(doc)
        assert json.dumps(document.to_dict(), indent=2) == raw, key  # same bytes, same order
        assert document.record.record_digest == record_digest(doc["attributes"])
        assert document.sealed() == document
        # the reader, the catalog and the pointer all see this same typed record
        record = catalog.load(target.store.storage, target.group_path)
        assert record == document.record
        assert (record.content_hash, record.shape, record.dtype, record.chunks) == (
            target.content_hash,
            target.shape,
            target.dtype,
            target.chunks,
        )
    image = catalog.load(every_kind["image"].store.storage, every_kind["image"].group_path)
    assert isinstance(image, ArrayRecord)
    assert [level.path for level in image.levels] == ["1", "2"]
    assert image.image is not None
    assert image.image.scale == (3.0, 0.5, 0.5)
    level_doc = json.loads(
        (
            Path(every_kind["image"].store_url) / every_kind["image"].group_path / "2/zarr.json"
        ).read_text()
    )
    attrs = LevelArrayAttrs.from_dict(level_doc["attributes"]["cpr_zarr"])
    assert attrs.level == 2
    assert attrs.steps == (image.levels[0].step, image.levels[1].step)
    labels = catalog.load(every_kind["labels"].store.storage, every_kind["labels"].group_path)
    assert isinstance(labels, ArrayRecord)
    assert labels.labels_of == every_kind["image"].group_path
    table = catalog.load(every_kind["table"].store.storage, every_kind["table"].group_path)
    assert isinstance(table, TableRecord)
    assert [c.name for c in table.table.columns] == ["n", "kind", "text", "count"]
    kind = table.table.columns[1]
    assert (kind.kind, kind.ordered, kind.categories and kind.categories.kind) == (
        "category",
        True,
        "string",
    )
    assert table.table.index.multi
    assert table.table.index.names == ("k", None)
    assert table.digest_count == len(table.digests)


def test_store_root_and_provenance_records(local_store: cpr_zarr.ResultStore) -> None:
    root = Path(local_store.url)
    doc = json.loads((root / "zarr.json").read_text())
    assert StoreRoot.from_dict(doc["attributes"]["cpr_zarr"]) == StoreRoot()
    assert StoreRoot().document() == doc
    target = local_store.save(np.arange(4), "v", provenance={"note": "kept", "run": 3})
    (stored,) = local_store.provenance(target)
    record = ProvenanceRecord.from_dict(stored)
    assert record.to_dict() == stored
    assert record.extra == {"note": "kept", "run": 3}
    assert record.output == "v"
    assert record.task_name is None
    assert record.pid == os.getpid()  # the process that wrote it
    assert record.worker is None  # not a Dask worker (tests/test_cluster.py: on workers)
    assert record.created_at.tzinfo is not None


def test_a_provenance_field_of_the_wrong_type_is_refused_when_saving(
    local_store: cpr_zarr.ResultStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``inputs`` holds content hashes (lineage follows them): a string there is refused."""
    with caplog.at_level(logging.WARNING, logger="cpr_zarr"):
        target = local_store.save(np.arange(4), "v", provenance={"inputs": "abc"})
    assert local_store.provenance(target) == []
    assert "inputs is 'abc', expected a list of strings" in caplog.text


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (lambda r: r.update(shape="3"), "shape", "shape is '3', expected a list of integers"),
        (lambda r: r.pop("digest_root"), "digest_root", "digest_root is missing"),
        (lambda r: r.update(digest_root=7), "digest_root", "digest_root is 7, expected a string"),
        (lambda r: r.update(layout=3), "layout", "layout 3.*Upgrade cpr_zarr"),
        (lambda r: r.update(kind="volume"), "kind", "kind is 'volume', expected 'array'"),
        (
            lambda r: r["levels"][1].update(chunks=[1, 0, 2]),
            "levels[1].chunks",
            r"levels\[1\].chunks is \[1, 0, 2\], expected a list of integers >= 1",
        ),
        (
            lambda r: r["image"].update(scale=[3, 0.5, 0.5]),
            "image",
            "image metadata in canonical form",
        ),
        (lambda r: r.update(labels_of=5), "labels_of", "labels_of is 5, expected a string"),
    ],
)
def test_array_record_errors_name_the_field(
    every_kind: dict[str, cpr_zarr.ZarrTarget], change: Any, field: str, message: str
) -> None:
    _, doc = marker(every_kind["image"])
    record = doc["attributes"]["cpr_zarr"]
    change(record)
    with pytest.raises(RecordError, match=message) as info:
        parse_result_record(record)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_table_record_errors_name_the_field(every_kind: dict[str, cpr_zarr.ZarrTarget]) -> None:
    _, doc = marker(every_kind["table"])
    record = doc["attributes"]["cpr_zarr"]
    record["table"]["columns"][1]["kind"] = "sparse"
    with pytest.raises(RecordError, match="newer cpr_zarr; upgrade") as info:
        TableRecord.from_dict(record)
    assert info.value.field == "table.columns[1].kind"
    record["table"]["columns"][1]["kind"] = "category"
    del record["table"]["columns"][1]["ordered"]
    with pytest.raises(RecordError, match=r"table.columns\[1\].ordered is missing"):
        TableRecord.from_dict(record)
    record["table"]["columns"][1]["ordered"] = True
    with pytest.raises(RecordError, match="rows is -1"):
        TableSchema.from_dict({**record["table"], "rows": -1})
    with pytest.raises(RecordError, match="created is 'yesterday', expected an ISO time"):
        ProvenanceRecord.from_dict({"created": "yesterday"})
    with pytest.raises(RecordError, match="step is missing"):
        LevelRecord.from_dict({"path": "1", "shape": [1], "chunks": [1], "chunk_digests": []})


def test_a_record_of_a_newer_version_with_more_fields_keeps_verifying(
    every_kind: dict[str, cpr_zarr.ZarrTarget],
) -> None:
    """Unknown keys are kept and written back: the record digest covers them."""
    target = every_kind["vector"]
    path = Path(target.store_url) / target.group_path / "zarr.json"
    doc = json.loads(path.read_text())
    record = doc["attributes"]["cpr_zarr"]
    record["future"] = {"checksum": "sha3"}
    record["record_digest"] = record_digest(doc["attributes"])
    path.write_text(json.dumps(doc, indent=2))
    (path.parent / "cpr_zarr" / "record.json").unlink()
    store = cpr_zarr.ResultStore(target.store_url, mode="r")
    typed = catalog.load(store.storage, target.group_path)
    assert typed.extra == {"future": {"checksum": "sha3"}}
    assert typed.to_dict() == record
    np.testing.assert_array_equal(store.open(target.group_path).to_numpy(), np.linspace(0, 1, 7))


def test_a_record_with_a_wrong_type_is_an_integrity_error_naming_the_field(
    every_kind: dict[str, cpr_zarr.ZarrTarget],
) -> None:
    """A table whose schema has a wrong type, yet hashes to its path (as a buggy writer
    would leave it): reading it names the field, the store and the group."""
    from cpr_zarr.model.hashing import table_hash

    target = every_kind["table"]
    root = Path(target.store_url)
    doc = json.loads((root / target.group_path / "zarr.json").read_text())
    record = doc["attributes"]["cpr_zarr"]
    record["table"]["columns_dtype"] = 7
    record["content_hash"] = table_hash(
        record["table"], record["digests"], algorithm=record["algorithm"]
    )
    record["record_digest"] = record_digest(doc["attributes"])
    path = f"table-{record['content_hash']}"
    (root / target.group_path).rename(root / path)
    (root / path / "zarr.json").write_text(json.dumps(doc))
    store = cpr_zarr.ResultStore(target.store_url, mode="r")
    with pytest.raises(
        IntegrityError, match=r"table\.columns_dtype is 7, expected a string"
    ) as info:
        store.open(path)
    assert info.value.field == "cpr_zarr.table.columns_dtype"
    assert info.value.group_path == path


def test_records_are_frozen_and_compare_by_value() -> None:
    record = ArrayRecord(
        content_hash="0" * 32, name="a", shape=(2,), dtype="uint8", chunks=(2,), chunk_digests=()
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "b"  # type: ignore[misc]
    again = parse_result_record(record.to_dict())
    assert again == record
    assert again.keys == tuple(record.to_dict())
    assert list(record.to_dict()) == [
        "layout", "algorithm", "content_hash", "name", "kind", "array", "shape", "dtype",
        "chunks", "chunk_digests",
    ]  # fmt: skip


# keys that only the commit record, the root document and provenance records have
RECORD_KEYS = {
    "chunk_digests",
    "labels_of",
    "record_digest",
    "store_layout",
    "columns_dtype",
    "cpr_zarr_provenance",
}
# where they may be written as literals: the typed records, and the checker of raw documents
ALLOWED = {"model/records.py", "core/integrity.py"}


def test_record_keys_are_written_in_one_place() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ALLOWED:
            continue
        found += [
            f"{relative}:{node.lineno}: {node.value!r}"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and node.value in RECORD_KEYS
        ]
    assert found == []


@pytest.mark.parametrize(
    "kind", ["image", "labels", "table", "empty_table", "feature_table", "pil", "empty"]
)
def test_info_works_on_every_kind_of_result(
    every_kind: dict[str, cpr_zarr.ZarrTarget], kind: str
) -> None:
    target = every_kind[kind]
    runner = CliRunner()
    store_url = target.store_url
    text = runner.invoke(main, ["info", store_url, target.group_path], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    record = catalog.load(target.store.storage, target.group_path)
    what = "stored array" if "table" in kind else "chunk"
    count = record.digest_count
    assert f"{count} {what}{'s' * (count != 1)}" in text.output
    doc = runner.invoke(
        main, ["info", store_url, target.group_path, "--json"], catch_exceptions=False
    )
    assert doc.exit_code == 0, doc.output
    out = json.loads(doc.output)
    assert out["kind"] == record.kind == ("table" if "table" in kind else "array")
    assert out["chunk_count"] == record.digest_count
    assert out["algorithm"] == record.algorithm
    assert (out["ome"] is None) == ("table" in kind)
    if kind == "feature_table":
        labels = every_kind["labels"].group_path
        assert f"feature table of label image {labels}" in text.output
    if kind == "pil":
        assert [a["name"] for a in out["ome"]["multiscales"][0]["axes"]] == ["c", "y", "x"]
