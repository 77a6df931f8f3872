"""Fault injection: nothing wrong is ever served, damage is reported, nothing intact collected.

A small store (an image with a 3-level pyramid, a label image of it, a 1-D array with a
chunk that holds only zeros, a table with every kind of column) is damaged one document
field at a time (type change, value change, removal) and one bit at a time over every
metadata file. After each fault, with verification on:

* every read (open, get_data, to_numpy, read_level, read_table, the Prefect serializer's
  load path, listings) returns exactly the original values or refuses with an error;
* ``verify`` fails for every fault that changes what a reader gets (a refused read);
* garbage collection plans to remove nothing (there are no leftovers, only damage).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest

import cpr_zarr
from cpr_zarr.core.integrity import RECORD_COPY
from cpr_zarr.core.inventory import leftovers, plan_gc
from cpr_zarr.core.pyramid import level_count, read_level
from cpr_zarr.core.table import read_table
from cpr_zarr.errors import CprZarrError, IntegrityError
from cpr_zarr.model.hashing import block_digest

if TYPE_CHECKING:
    from pathlib import Path

FLIPS_PER_FILE = 12  # deterministic sample of single-bit flips per metadata file


def _build(root: Path) -> dict[str, str]:
    store = cpr_zarr.ResultStore(root)
    image = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 7) % 1000
    img = store.save(image, name="img", chunks=(12, 10), axes="yx", scale=0.5, levels=2)
    labels = (image % 3).astype(np.uint8)
    lab = store.save(cpr_zarr.Labels(labels, image=img, colors={1: (255, 0, 0)}), name="lab")
    vec = np.linspace(-1, 1, 12, dtype=np.float32)
    vec[4:8] = 0  # a chunk of fill values: not stored, read as zeros after a digest check
    v = store.save(vec, name="vec", chunks=4)
    table = pd.DataFrame(
        {
            "n": [1, 2, 3],
            "s": ["x", None, "z"],
            "c": pd.Categorical(["u", "v", "u"]),
            "m": pd.array([1, None, 3], dtype="Int64"),
        },
        index=pd.Index([10, 20, 30], name="k"),
    )
    tab = store.save(table, name="tab")  # one parquet file
    # object columns mixing types: parquet cannot hold them, one zarr array per column
    mixed = pd.DataFrame({"o": pd.Series([1, "a", None], dtype=object)})
    cols = store.save(mixed, name="cols")
    features = pd.DataFrame({"area": [160.0, 160.0]}, index=pd.Index([1, 2], name="label"))
    feat = store.save(cpr_zarr.Table(features, labels=lab), name="feat")  # in img/tables/
    return {
        "img": img.group_path,
        "lab": lab.group_path,
        "vec": v.group_path,
        "tab": tab.group_path,
        "cols": cols.group_path,
        "feat": feat.group_path,
    }


def _observe(root: Path, paths: dict[str, str]) -> dict[str, Any]:
    """What a reader gets for each result: values (every level), dtypes, metadata; or the error."""
    from cpr_zarr.serializer import TARGET_KEY, decode_object

    out: dict[str, Any] = {}
    try:
        store = cpr_zarr.ResultStore(root)
    except CprZarrError as exc:
        return {key: ("refused", type(exc).__name__) for key in paths}
    listed = {t.group_path for t in store.targets()}  # never fails for one bad record
    for key, path in paths.items():
        if path not in listed:
            out[key] = ("refused", "not listed")
            continue
        try:
            target = store.open(path)
            loaded = decode_object({TARGET_KEY: target.to_dict()})
            if loaded != target:
                out[key] = ("pointer changed", loaded)
                continue
            if target.dtype == "table":
                out[key] = ("table", read_table(target))
                continue
            levels = [  # the base through to_numpy, the other levels through read_level
                read_level(target, i).compute(scheduler="sync")
                for i in range(1, level_count(target))
            ]
            out[key] = (
                "array",
                (target.shape, target.dtype, target.chunks),
                target.to_numpy(),
                levels,
                store.reader(target).attrs.get("image"),
            )
        except CprZarrError as exc:
            out[key] = ("refused", type(exc).__name__)
    return out


def _same(a: Any, b: Any) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "table":
        try:
            pd.testing.assert_frame_equal(a[1], b[1], check_exact=True)
        except AssertionError:
            return False
        return True
    if a[0] == "array":
        return (
            a[1] == b[1]
            and a[2].dtype == b[2].dtype
            and np.array_equal(a[2], b[2])
            and len(a[3]) == len(b[3])
            and all(
                x.dtype == y.dtype and np.array_equal(x, y)
                for x, y in zip(a[3], b[3], strict=False)
            )
            and a[4] == b[4]
        )
    return True  # both refused


# -- mutations of JSON documents ----------------------------------------------------------


def _fields(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every field path in a document (containers and leaves).

    In lists of more than two digests only the first and last are mutated: the others
    are the same kind of field at another position.
    """
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _fields(v, (*prefix, k))
    elif isinstance(doc, list):
        digests = len(doc) > 2 and all(isinstance(v, str) and len(v) == 32 for v in doc)
        for i, v in enumerate(doc):
            if not digests or i in (0, len(doc) - 1):
                out += _fields(v, (*prefix, i))
    return out


def _changed_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    if isinstance(value, list):
        return value[::-1] if len(value) > 1 and value[0] != value[-1] else [*value, *value[:1]]
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return "x"  # None


def _changed_type(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {"0": value[0]} if value else {}
    if isinstance(value, dict):
        return list(value.values())
    return 0  # None


def _mutations(doc: Any) -> list[tuple[str, Any]]:
    """(description, mutated document) for every field: value change, type change, removal."""
    out = []
    for path in _fields(doc):
        *parents, last = path
        for kind in ("value", "type", "removal"):
            mutated = copy.deepcopy(doc)
            holder = mutated
            for p in parents:
                holder = holder[p]
            if kind == "removal":
                del holder[last]
            else:
                change = _changed_value if kind == "value" else _changed_type
                holder[last] = change(holder[last])
            if mutated != doc:
                out.append((f"{kind} of {'.'.join(map(str, path))}", mutated))
    return out


def _metadata_files(root: Path, *, copies: bool = True) -> list[Path]:
    """Group and array documents, provenance records and (``copies``) the record copies and
    binary digest blocks (read by chunk reads, verify and repair only)."""

    def wanted(path: Path) -> bool:
        rel = path.relative_to(root).as_posix()
        if path.name == "zarr.json" or "/cpr_zarr/provenance/" in rel:
            return True
        return copies and (rel.endswith(f"/{RECORD_COPY}") or "/cpr_zarr/digests/" in rel)

    return sorted(p for p in root.rglob("*") if p.is_file() and wanted(p))


def _listed(file: Path, original: bytes) -> bool:
    """Whether listings read ``file`` (group documents and provenance records do)."""
    if "digests" in file.parts:
        return False
    return json.loads(original).get("node_type") != "array"


class Tally:
    def __init__(self) -> None:
        self.tried = self.detected = self.harmless = self.wrong = self.gc_removals = 0
        self.failures: list[str] = []


def _owners(root: Path, file: Path, paths: dict[str, str]) -> dict[str, str]:
    """The results a metadata file belongs to (all of them for the root document)."""
    rel = file.relative_to(root).as_posix()
    owner = max((p for p in paths.values() if rel.startswith(p + "/")), key=len, default=None)
    return {k: p for k, p in paths.items() if owner is None or p == owner}


def _check_fault(
    root: Path,
    paths: dict[str, str],
    baseline: dict[str, Any],
    what: str,
    tally: Tally,
    *,
    listed: bool = True,
) -> None:
    """Read, verify and plan a gc of the results ``paths`` after one fault.

    ``listed``: the fault is in a document listings read (a group document: markers,
    provenance records), so the full gc plan (which lists every result) is made; else
    only gc's leftover rule is applied (what a plan without criteria removes).
    """
    tally.tried += 1
    seen = _observe(root, paths)
    wrong = [k for k, v in seen.items() if v[0] not in ("refused",) and not _same(v, baseline[k])]
    refused = [k for k, v in seen.items() if v[0] == "refused"]
    try:
        store = cpr_zarr.ResultStore(root)
        verified = store.verify(tuple(paths.values())).ok
        # plan_gc lists every result (never failing for one bad record)
        plan = plan_gc(store.storage, leftover_age=0) if listed else leftovers(store.storage, 0)
    except CprZarrError:  # the store root itself is unreadable: nothing is listed or removed
        verified, plan = False, []
    if wrong:
        tally.wrong += 1
        tally.failures.append(f"{what}: WRONG values served for {wrong}")
    if refused and verified:
        tally.failures.append(f"{what}: reads of {refused} refused but verify passed")
    if plan:
        tally.gc_removals += 1
        tally.failures.append(f"{what}: gc would remove {[r.path for r in plan]}")
    if refused or not verified:
        tally.detected += 1
    else:
        tally.harmless += 1


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, Any]]:
    root = tmp_path_factory.mktemp("integrity") / "results.zarr"
    paths = _build(root)
    baseline = _observe(root, paths)
    assert all(v[0] in ("array", "table") for v in baseline.values()), baseline
    assert cpr_zarr.ResultStore(root).verify().ok
    return root, paths, baseline


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="cpr_zarr")


# long by design (every document, every block, a whole flow): more than the
# suite's 600 s on a busy 2-core machine
@pytest.mark.timeout(1800)
def test_every_field_of_every_document_mutated(
    built: tuple[Path, dict[str, str], dict[str, Any]],
) -> None:
    root, paths, baseline = built
    tally = Tally()
    start, cpu = time.perf_counter(), time.process_time()
    # record copies are read only by verify and repair: they get the bit flips below and
    # test_a_damaged_record_copy_is_reported_and_rewritten
    for file in _metadata_files(root, copies=False):
        original = file.read_bytes()
        doc = json.loads(original)
        listed = doc.get("node_type") != "array"
        for what, mutated in _mutations(doc):
            file.write_text(json.dumps(mutated, indent=2))
            try:
                _check_fault(
                    root,
                    _owners(root, file, paths),
                    baseline,
                    f"{file.relative_to(root)}: {what}",
                    tally,
                    listed=listed,
                )
            finally:
                file.write_bytes(original)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"\nfield mutations: {tally.tried} tried, {tally.detected} detected, {tally.harmless} "
        f"harmless (reader gets the original), {tally.wrong} served wrong values, "
        f"{tally.gc_removals} gc removals ({elapsed:.1f} s, {cpu:.1f} s CPU)"
    )
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert tally.wrong == 0
    assert tally.tried > 1000


# long by design (every document, every block, a whole flow): more than the
# suite's 600 s on a busy 2-core machine
@pytest.mark.timeout(1800)
def test_single_bit_flips_over_every_metadata_file(
    built: tuple[Path, dict[str, str], dict[str, Any]],
) -> None:
    root, paths, baseline = built
    tally = Tally()
    rng = random.Random(13)
    start, cpu = time.perf_counter(), time.process_time()
    for file in _metadata_files(root):
        original = file.read_bytes()
        listed = _listed(file, original)
        bits = len(original) * 8
        for bit in sorted(rng.sample(range(bits), min(FLIPS_PER_FILE, bits))):
            damaged = bytearray(original)
            damaged[bit // 8] ^= 1 << (bit % 8)
            file.write_bytes(bytes(damaged))
            try:
                _check_fault(
                    root,
                    _owners(root, file, paths),
                    baseline,
                    f"{file.relative_to(root)} bit {bit}",
                    tally,
                    listed=listed,
                )
            finally:
                file.write_bytes(original)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"\nbit flips: {tally.tried} tried, {tally.detected} detected, {tally.harmless} "
        f"harmless, {tally.wrong} served wrong values, {tally.gc_removals} gc removals "
        f"({elapsed:.1f} s, {cpu:.1f} s CPU)"
    )
    assert not tally.failures, "\n".join(tally.failures[:20])
    # 12 flips in each of ~30 documents (a parquet table has no per-column array documents)
    assert tally.tried > 350


# -- targeted cases (the findings) ------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "results.zarr"
    return root, _build(root)


def _edit(file: Path, change: Any) -> None:
    doc = json.loads(file.read_text())
    change(doc)
    file.write_text(json.dumps(doc, indent=2))


def test_a_changed_array_data_type_is_refused_naming_store_group_and_field(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    _edit(root / paths["img"] / "0" / "zarr.json", lambda d: d.update(data_type="int16"))
    store = cpr_zarr.ResultStore(root)
    with pytest.raises(IntegrityError, match=r"data_type in img-\w+/0/zarr.json is 'int16'") as e:
        store.open(paths["img"]).to_numpy()
    assert e.value.field == "data_type"
    assert e.value.group_path == paths["img"]
    assert str(root) in str(e.value)
    assert "--repair" in str(e.value)


def test_record_dtype_shape_and_swapped_chunks_do_not_hash_to_the_path(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    marker = root / paths["img"] / "zarr.json"
    original = marker.read_bytes()

    def swap_roots(d: dict[str, Any]) -> None:  # the base's digest tree for the level's
        record = d["attributes"]["cpr_zarr"]
        record["digest_root"] = record["levels"][0]["digest_root"]

    for change, field in [
        (lambda d: d["attributes"]["cpr_zarr"].update(dtype="int16"), "dtype"),
        (lambda d: d["attributes"]["cpr_zarr"].update(shape=[20, 24]), "shape"),
        (swap_roots, "digest_root"),
    ]:
        _edit(marker, change)
        with pytest.raises(IntegrityError, match=field) as e:
            cpr_zarr.ResultStore(root).open(paths["img"])
        assert "hash to" in str(e.value) or "is " in str(e.value)
        marker.write_bytes(original)


@pytest.mark.parametrize("digest", [True, False], ids=["sealed", "older-record"])
def test_swapped_level_records_are_refused(tmp_path: Path, digest: bool) -> None:
    store = cpr_zarr.ResultStore(tmp_path / "results.zarr")
    image = np.arange(40 * 36, dtype=np.uint16).reshape(40, 36)
    path = store.save(image, name="img", chunks=(8, 8), axes="yx", levels=3).group_path

    def swap(d: dict[str, Any]) -> None:
        levels = d["attributes"]["cpr_zarr"]["levels"]
        levels[0], levels[1] = levels[1], levels[0]
        if not digest:  # as in a record written before record digests
            d["attributes"]["cpr_zarr"].pop("record_digest")

    _edit(tmp_path / "results.zarr" / path / "zarr.json", swap)
    with pytest.raises(IntegrityError, match=r"levels\[0\].path .* is '2', expected '1'"):
        read_level(cpr_zarr.ResultStore(tmp_path / "results.zarr").open(path), 1)


def test_level_chunks_swapped_with_their_digests_are_refused(tmp_path: Path) -> None:
    """Only the record digest binds a level's chunk order (the content hash is the base's)."""
    root = tmp_path / "results.zarr"
    store = cpr_zarr.ResultStore(root)
    image = np.arange(40 * 36, dtype=np.uint16).reshape(40, 36)
    path = store.save(image, name="img", chunks=(8, 8), axes="yx", levels=2).group_path
    a, b = root / path / "1" / "c" / "0" / "0", root / path / "1" / "c" / "0" / "1"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)

    # the level's digest block with the two digests swapped, and its root in the record
    leaves = root / path / "cpr_zarr" / "digests" / "1" / "0" / "0"
    block = bytearray(leaves.read_bytes())
    block[0:16], block[16:32] = block[16:32], block[0:16]
    leaves.write_bytes(bytes(block))

    def swap(d: dict[str, Any]) -> None:
        d["attributes"]["cpr_zarr"]["levels"][0]["digest_root"] = block_digest(bytes(block)).hex()

    _edit(root / path / "zarr.json", swap)
    with pytest.raises(IntegrityError, match="record_digest"):
        read_level(cpr_zarr.ResultStore(root).open(path), 1)


def test_a_changed_table_column_dtype_is_refused(small: tuple[Path, dict[str, str]]) -> None:
    root, paths = small
    _edit(
        root / paths["cols"] / "c0" / "codes" / "zarr.json", lambda d: d.update(data_type="int16")
    )
    store = cpr_zarr.ResultStore(root)
    with pytest.raises(IntegrityError, match=r"data_type in cols-.*/c0/codes/zarr\.json"):
        read_table(store.open(paths["cols"]))

    def rename(d: dict[str, Any]) -> None:
        d["attributes"]["cpr_zarr"]["table"]["columns"][0]["name"] = "renamed"

    _edit(root / paths["tab"] / "zarr.json", rename)
    with pytest.raises(IntegrityError, match=r"cpr_zarr\.table"):
        read_table(cpr_zarr.ResultStore(root).open(paths["tab"]))


def test_a_marker_stripped_of_its_digest_is_not_taken_for_an_older_record(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    _edit(
        root / paths["img"] / "zarr.json",
        lambda d: d["attributes"]["cpr_zarr"].pop("record_digest"),
    )
    with pytest.raises(IntegrityError, match=r"record_digest in img-\w+/zarr\.json is missing"):
        cpr_zarr.ResultStore(root).open(paths["img"])


def test_records_without_digest_or_copy_still_open_and_verify(
    small: tuple[Path, dict[str, str]],
) -> None:
    """Stores written before record digests and copies existed."""
    root, paths = small
    for path in paths.values():
        (root / path / RECORD_COPY).unlink()
        _edit(root / path / "zarr.json", lambda d: d["attributes"]["cpr_zarr"].pop("record_digest"))
    store = cpr_zarr.ResultStore(root)
    assert store.verify().ok
    assert {t.group_path for t in store.targets()} == set(paths.values())
    assert read_level(store.open(paths["img"]), 1).compute().shape == (12, 10)


@pytest.mark.parametrize("damage", ["invalid json", "empty", "wrong hash", "array node"])
def test_a_damaged_marker_is_reported_never_collected_and_repaired(
    small: tuple[Path, dict[str, str]], damage: str
) -> None:
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    root, paths = small
    marker = root / paths["img"] / "zarr.json"
    before = _observe(root, {"img": paths["img"]})["img"]
    text = marker.read_text()
    marker.write_text(
        {
            "invalid json": text[:-3],
            "empty": "",
            "wrong hash": text.replace(paths["img"][-32:], "0" * 32),
            "array node": text.replace('"group"', '"array"'),
        }[damage]
    )
    old = time.time() - 30 * 86400
    for file in (root / paths["img"]).rglob("*"):
        os.utime(file, (old, old))
    store = cpr_zarr.ResultStore(root)
    # listings read the catalog, not every marker: damage is reported by open, read,
    # damaged(), verify and gc, and never removed
    assert paths["img"] in {t.group_path for t in store.targets()}
    assert [d.group_path for d in store.damaged()] == [paths["img"]]
    with pytest.raises(IntegrityError, match="is damaged"):
        store.open(paths["img"])
    assert store.list()["name"].tolist().count("img") == 1
    assert plan_gc(store.storage, leftover_age=0) == []
    runner = CliRunner()
    ls = runner.invoke(main, ["ls", str(root)])
    assert ls.exit_code == 0
    # gc reads the records of the results it plans to remove: the damaged one is kept
    planned = plan_gc(store.storage, max_size=0, leftover_age=0)
    assert paths["img"] in [item.path for item in planned]
    gc = runner.invoke(main, ["gc", str(root), "--max-size", "0", "--yes"])
    assert gc.exit_code == 0, gc.output
    assert f"keeping damaged result {paths['img']}" in gc.output
    removed = [line for line in gc.output.splitlines() if line.startswith("remove")]
    assert not [line for line in removed if paths["img"] in line], gc.output
    assert (root / paths["img"] / "zarr.json").exists()
    bad = runner.invoke(main, ["verify", str(root)])
    assert bad.exit_code == 1
    assert f"BAD Result {paths['img']!r}" in bad.output
    fixed = runner.invoke(main, ["verify", str(root), "--repair"])
    assert fixed.exit_code == 0, fixed.output
    assert "REPAIRED rebuilt the commit record" in fixed.output
    assert runner.invoke(main, ["verify", str(root)]).exit_code == 0
    assert _same(_observe(root, {"img": paths["img"]})["img"], before)


def test_a_lost_marker_with_its_copy_is_kept_and_restored(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    (root / paths["vec"] / "zarr.json").unlink()
    store = cpr_zarr.ResultStore(root)
    assert plan_gc(store.storage, leftover_age=0) == []  # the copy shows it was committed
    report = store.verify()
    assert not report.ok
    assert "is missing but its record copy exists" in report.problems[0]
    assert store.verify(repair=True).ok
    np.testing.assert_array_equal(
        cpr_zarr.ResultStore(root).open(paths["vec"]).to_numpy()[:4],
        np.linspace(-1, 1, 12, dtype=np.float32)[:4],
    )


def test_repair_without_a_copy_rebuilds_from_chunks_that_hash_to_the_path(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    (root / paths["vec"] / RECORD_COPY).unlink()
    (root / paths["vec"] / "zarr.json").write_text("{")
    store = cpr_zarr.ResultStore(root)
    report = store.verify(repair=True)
    assert report.ok
    assert "from its chunks" in report.repaired[0]
    assert cpr_zarr.ResultStore(root).open(paths["vec"]).shape == (12,)
    # a chunk that no longer verifies: the marker is not rebuilt
    (root / paths["vec"] / "zarr.json").write_text("{")
    chunk = root / paths["vec"] / "0" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    report = cpr_zarr.ResultStore(root).verify(repair=True)
    assert not report.ok
    assert "does not verify, not repaired" in report.problems[0]


def test_a_damaged_record_copy_is_reported_and_rewritten(
    small: tuple[Path, dict[str, str]],
) -> None:
    root, paths = small
    (root / paths["tab"] / RECORD_COPY).write_text("[]")
    report = cpr_zarr.ResultStore(root).verify()
    assert not report.ok
    assert "record copy" in report.problems[0]
    assert cpr_zarr.ResultStore(root).verify(repair=True).ok
    assert cpr_zarr.ResultStore(root).verify().ok


def test_a_damaged_provenance_record_breaks_nothing_else(
    small: tuple[Path, dict[str, str]],
) -> None:
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    root, paths = small
    (record,) = (root / paths["vec"] / "cpr_zarr" / "provenance").glob("*.json")
    _edit(record, lambda d: d.update(created="yesterday"))
    store = cpr_zarr.ResultStore(root)
    assert len(store.list()) == len(paths)
    assert store.provenance(paths["vec"]) == []
    assert plan_gc(store.storage, leftover_age=0) == []
    runner = CliRunner()
    assert runner.invoke(main, ["ls", str(root)]).exit_code == 0
    assert runner.invoke(main, ["info", str(root), paths["vec"]]).exit_code == 0
    bad = runner.invoke(main, ["verify", str(root)])
    assert bad.exit_code == 1
    assert "Provenance record" in bad.output


def test_the_serializer_load_path_refuses_a_damaged_result(
    small: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    from cpr_zarr.serializer import TARGET_KEY, decode_object

    root, paths = small
    target = cpr_zarr.ResultStore(root).open(paths["vec"])
    caplog.set_level(logging.WARNING, logger="cpr_zarr")
    _edit(root / paths["vec"] / "0" / "zarr.json", lambda d: d.update(fill_value=1.0))
    with pytest.raises(IntegrityError, match="fill_value"):
        decode_object({TARGET_KEY: target.to_dict()})
    assert "cannot be loaded" in caplog.text
    _edit(root / paths["vec"] / "0" / "zarr.json", lambda d: d.update(fill_value=0.0))
    assert decode_object({TARGET_KEY: target.to_dict()}) == target
    forged = {**target.to_dict(), "dtype": "int32"}
    with pytest.raises(IntegrityError, match="pointer"):
        decode_object({TARGET_KEY: forged})


def test_saving_the_same_content_again_rewrites_a_damaged_marker(
    small: tuple[Path, dict[str, str]],
) -> None:
    """What a task re-run does when its cached result's marker is damaged."""
    root, paths = small
    (root / paths["vec"] / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    store = cpr_zarr.ResultStore(root)
    vec = np.linspace(-1, 1, 12, dtype=np.float32)
    vec[4:8] = 0
    target = store.save(vec, name="vec", chunks=4)
    assert target.group_path == paths["vec"]
    assert store.damaged() == []
    np.testing.assert_array_equal(cpr_zarr.ResultStore(root).open(paths["vec"]).to_numpy(), vec)


def test_a_damaged_result_can_be_deleted(small: tuple[Path, dict[str, str]]) -> None:
    root, paths = small
    (root / paths["lab"] / "zarr.json").write_text("null")
    store = cpr_zarr.ResultStore(root)
    assert store.delete(paths["lab"][-32:]) is None
    assert not (root / paths["lab"]).exists()
    assert store.damaged() == []
    assert (
        json.loads((root / paths["img"] / "labels" / "zarr.json").read_text())["attributes"]["ome"][
            "labels"
        ]
        == []
    )


def test_damage_is_reported_and_repaired_on_every_store_kind(store: cpr_zarr.ResultStore) -> None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    data = np.arange(200, dtype=np.int32).reshape(10, 20)
    target = store.save(data, name="a", chunks=(5, 10))
    key = f"{target.group_path}/zarr.json"
    good = sync(store.storage.zarr_store.get(key, default_buffer_prototype()))
    assert good is not None
    flipped = bytearray(good.to_bytes())
    flipped[len(flipped) // 2] ^= 0x04
    sync(
        store.storage.zarr_store.set(
            key, default_buffer_prototype().buffer.from_bytes(bytes(flipped))
        )
    )
    fresh = cpr_zarr.ResultStore(
        store.url, storage_options=getattr(store.storage, "storage_options", None)
    )
    assert [d.group_path for d in fresh.damaged()] == [target.group_path]
    # listed from the catalog (no marker read), refused when opened, never a leftover
    assert [t.group_path for t in fresh.targets()] == [target.group_path]
    assert leftovers(fresh.storage, 0) == []
    with pytest.raises(IntegrityError):
        fresh.open(target.content_hash)
    assert not fresh.verify().ok
    assert fresh.verify(repair=True).ok
    np.testing.assert_array_equal(fresh.open(target.content_hash).to_numpy(), data)


def test_verify_checks_every_pyramid_level(small: tuple[Path, dict[str, str]]) -> None:
    from click.testing import CliRunner

    from cpr_zarr.cli import main

    root, paths = small
    chunk = root / paths["img"] / "1" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[-2] ^= 0x10
    chunk.write_bytes(bytes(data))
    bad = CliRunner().invoke(main, ["verify", str(root)])
    assert bad.exit_code == 1
    assert f"chunk (0, 0) (pyramid level array '1') of result '{paths['img']}'" in bad.output
    assert "1 of 10 chunks failed verification" in bad.output  # img 4+1, lab 1+1, vec 3
