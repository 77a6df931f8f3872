"""Write the layout-1 compatibility fixture in ``tests/data/layout-1/``.

Layout 1 is the store layout of cpr_zarr before layout 2 (commit ``78d981f`` on main): per-chunk
digests as JSON in the commit record, the record copy as the zarr group ``cpr_zarr_record/``,
provenance as zarr groups under ``provenance/``. Run it with that code on the path::

    git worktree add --detach /tmp/layout1 78d981f
    PYTHONPATH=/tmp/layout1 .venv/bin/python tests/data/make_layout_1.py tests/data/layout-1

``tests/test_compat.py`` opens, verifies, lists and gc's a copy with the current code. What is
written: a 3-D image with two pyramid levels and a label image, a plain array with a
provenance record, and a table. ``expected.json`` holds group paths and values.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(out: Path) -> None:
    import numpy as np
    import pandas as pd

    import cpr_zarr

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store = cpr_zarr.ResultStore(out / "results.zarr")
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 1000, (4, 24, 24), dtype=np.uint16)
    image = store.save(
        cpr_zarr.Image(volume, axes="zyx", scale=(2.0, 0.5, 0.5), units="micrometer"),
        "volume",
        chunks=(2, 8, 8),
        levels=3,
        provenance={"note": "layout 1"},
    )
    labels = (volume > 500).astype(np.uint8)
    label_image = store.save(cpr_zarr.Labels(labels, image=image), "cells")
    vector = store.save(np.arange(10, dtype=np.float64), "vector", chunks=(4,))
    table = cpr_zarr.save_table(
        store, pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}), "table"
    )
    expected = {
        "layout": 1,
        "image": image.group_path,
        "label_image": label_image.group_path,
        "vector": vector.group_path,
        "table": table.group_path,
        "image_values": volume.tolist(),
        "label_values": labels.tolist(),
    }
    (out / "expected.json").write_text(json.dumps(expected) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
