"""Write the release-0.1 compatibility fixtures in ``tests/data/release-0.1/``.

Run it with the PREVIOUS release's code first on the path (commit ``eec068e``, before the
package was re-laid-out), so that what it writes is exactly what users' stores and Prefect
records hold today::

    git worktree add --detach /tmp/oldrel eec068e
    PYTHONPATH=/tmp/oldrel .venv/bin/python tests/data/make_release_0_1.py tests/data/release-0.1

``tests/test_compat.py`` then opens the fixtures with the current code. What is written:

* ``results.zarr/``: a store (first written at :data:`STORE`, the absolute URL the Prefect
  records and pickles name) with a 3-D image with NGFF metadata and two pyramid levels, a
  label image attached to it, a table (several column kinds, a named index), a PIL image
  (RGB, stored channel-first) and a plain array, each with provenance records (direct saves
  and ``cpr_zarr.task`` runs inside a flow, so lineage and task fields are filled);
* ``records/``: the Prefect result records those task runs persisted (one JSON file per
  cache key, serializer ``json`` with ``cpr_zarr.serializer`` hooks), including a tuple with
  an array, a table and a float, a dict, and a PIL image;
* ``pickled-records/``: the record of a plain ``@prefect.task`` that returned a
  ``ZarrTarget`` (Prefect's default pickle serializer);
* ``pickles/``: ``pickle.dumps`` of a ``ZarrTarget``, a ``PILTarget`` and cpr_zarr's
  errors (which pickle through rebuilders in ``cpr_zarr.errors``);
* ``expected.json``: what the test checks against (group paths, values, record fields).

Arrays are tiny: the folder stays well under 300 kB.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

STORE = "/tmp/cpr-zarr-release-0.1/results.zarr"


def main(out: Path) -> None:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cpr-zarr-fixture-prefect-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import numpy as np
    import pandas as pd
    import prefect
    from PIL import Image as PILImage
    from prefect.testing.utilities import prefect_test_harness

    import cpr_zarr
    from cpr_zarr.errors import ChunkVerificationError, IntegrityError, ResultNotFoundError

    if "/tmp/oldrel" not in cpr_zarr.__file__:
        print(f"warning: cpr_zarr imported from {cpr_zarr.__file__}, not the old release")
    shutil.rmtree(Path(STORE).parent, ignore_errors=True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    records = out / "records"
    pickled_records = out / "pickled-records"
    records.mkdir()
    pickled_records.mkdir()

    store = cpr_zarr.ResultStore(STORE)
    rng = np.random.default_rng(1)
    volume = (rng.normal(100, 10, (4, 32, 32)).clip(0, 65535)).astype(np.uint16)
    image = store.save(
        cpr_zarr.Image(volume, axes="zyx", scale=(2.0, 0.5, 0.5), units="micrometer"),
        "volume",
        chunks=(2, 16, 16),
        levels=3,
        provenance={"note": "direct save of release 0.1"},
    )
    labels = (volume > 105).astype(np.uint8) + (volume > 115).astype(np.uint8)
    label_image = store.save(
        cpr_zarr.Labels(labels, image=image, colors={1: (255, 0, 0, 255)}), "cells"
    )
    table = pd.DataFrame(
        {
            "area": np.array([10, 20, 30], dtype="int32"),
            "mean": [1.5, 2.5, float("nan")],
            "label": ["a", "b", "c"],
            "kind": pd.Categorical(["x", "y", "x"]),
            "count": pd.array([1, None, 3], dtype="Int64"),
            "when": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
            "misc": [None, 1, "two"],
        },
        index=pd.Index([7, 8, 9], name="cell"),
    )
    table_target = store.save(table, "measurements")
    plain = store.save(np.arange(10, dtype="float32"), "vector")

    @cpr_zarr.task(store=STORE, result_storage=records)
    def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
        return (image.astype(np.float32) * 0.5).astype(np.float32)

    @cpr_zarr.task(store=STORE, result_storage=records)
    def measure(image: np.ndarray) -> tuple[np.ndarray, pd.DataFrame, float]:
        frame = pd.DataFrame({"z": np.arange(image.shape[0]), "mean": image.mean(axis=(1, 2))})
        return image[0], frame, float(image.mean())

    @cpr_zarr.task(store=STORE, result_storage=records)
    def split(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"top": image[:2], "bottom": image[2:]}

    @cpr_zarr.task(store=STORE, result_storage=records)
    def thumbnail() -> tuple[PILImage.Image, PILImage.Image]:
        rgb = np.zeros((8, 12, 3), dtype=np.uint8)
        rgb[..., 0] = np.arange(12, dtype=np.uint8) * 20
        rgb[2:6, 3:9, 1] = 200
        return PILImage.fromarray(rgb, mode="RGB"), PILImage.fromarray(rgb[..., 1], mode="L")

    @prefect.task(persist_result=True, result_storage=pickled_records)
    def plain_pointer() -> cpr_zarr.ZarrTarget:
        return cpr_zarr.ResultStore(STORE).open("vector")

    @prefect.flow
    def pipeline() -> dict[str, object]:
        smoothed = smooth(image, 1.5)
        return {
            "smooth": smoothed,
            "measure": measure(smoothed),
            "split": split(image),
            "thumbnail": thumbnail(),
            "plain_pointer": plain_pointer(),
        }

    with prefect_test_harness(server_startup_timeout=180):
        results = pipeline()

    # the store, copied whole; the label image and the targets of every task result in it
    shutil.copytree(STORE, out / "results.zarr")
    pickles = out / "pickles"
    pickles.mkdir()
    rgb, gray = results["thumbnail"]
    (pickles / "zarr_target.pkl").write_bytes(pickle.dumps(image))
    (pickles / "pil_target.pkl").write_bytes(pickle.dumps(rgb))
    errors = [
        IntegrityError("damaged", store_url=STORE, group_path="x-" + "0" * 32, field="f"),
        ChunkVerificationError(
            "bad chunk", store_url=STORE, group_path="x-" + "0" * 32, chunk_index=(1, 2)
        ),
        ResultNotFoundError("no such result"),
    ]
    (pickles / "errors.pkl").write_bytes(pickle.dumps(errors))

    def pointer(t: cpr_zarr.ZarrTarget) -> dict[str, object]:
        return t.to_dict()

    measured_array, measured_table, measured_mean = results["measure"]
    expected = {
        "store": STORE,
        "version": cpr_zarr.__version__,
        "image": pointer(image),
        "image_values": volume.tolist(),
        "label_image": pointer(label_image),
        "label_values": labels.tolist(),
        "table": pointer(table_target),
        "table_csv": table.to_csv(),
        "vector": pointer(plain),
        "smooth": pointer(results["smooth"]),
        "measure": [pointer(measured_array), pointer(measured_table), measured_mean],
        "split": {k: pointer(v) for k, v in results["split"].items()},
        "thumbnail": [pointer(rgb), pointer(gray)],
        "thumbnail_modes": [rgb.pil_mode, gray.pil_mode],
        "plain_pointer": pointer(results["plain_pointer"]),
        "levels": len(image.store.reader(image).attrs["levels"]),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "release-0.1"))
