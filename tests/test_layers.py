"""The package's layers, checked on its source: imports point down, privates stay private.

The layers, bottom to top (README "How the code is laid out"):

    base     redact, errors, logs               exceptions, secret redaction, log forwarding
    model    model/*, target                    pure: names, hashing, NGFF metadata, records
    storage  storage/*                          the only code that knows folders from buckets
    core     core/*                             the data path, on the Storage interface
    facade   store                              ResultStore
    prefect  decorator, cache, serializer, ...  the Prefect integration
    outer    cli, web/*, napari plugin, testing  entry points

A module may import from its own layer only what comes before it in the order below (so no
import cycle can form inside a layer) and anything from lower layers. Every import counts:
module level, inside functions and under ``TYPE_CHECKING``. The few upward calls a value type
makes from one method (STYLE.md) are listed in ``ALLOWED`` with their reason.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import cpr_zarr

PACKAGE = Path(cpr_zarr.__file__).parent

# bottom to top; inside a layer, a module may import only the modules listed before it
LAYERS: dict[str, list[str]] = {
    "base": ["redact", "errors", "logs"],
    "model": [
        "model",
        "model.layout",
        "model.hashing",
        "model.ngff",
        "model.records",
        "target",
    ],
    "storage": [
        "storage.base",
        "storage._local",
        "storage._fsspec",
        "storage._obstore",
        "storage._zarrstore",
        "storage",
    ],
    "core": [
        "core",
        "core.compute",
        "core.codec",
        "core.progress",
        "core.lease",
        "core.arrays",
        "core.digests",
        "core.integrity",
        "core.catalog",
        "core.reader",
        "core.provenance",
        "core.pyramid",
        "core.labels",
        "core.table",
        "core.writer",
        "core.inventory",
        "core.collector",
        "core.verify",
        "core.export",
        "core.source",
        "core.preview",
    ],
    "facade": ["store"],
    "prefect": ["inputs", "cache", "serializer", "artifacts", "decorator"],
    "outer": [
        "testing",
        "layers",
        "web",
        "web.thumbnail",
        "web.catalog",
        "web.view",
        "web.pages",
        "web.server",
        "cli",
    ],
}

# (importer, imported): why this upward import is right
ALLOWED = {
    ("target", "store"): "ZarrTarget.store / get_data open the facade from inside one method "
    "(a pointer value type calling up into I/O, STYLE.md), never at import",
}

EXEMPT = {"__init__", "__main__"}  # the public namespace (lazy re-exports) and `python -m`


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _position(module: str) -> tuple[int, int] | None:
    for rank, (_, members) in enumerate(LAYERS.items()):
        if module in members:
            return rank, members.index(module)
    return None


def _resolve(name: str) -> str | None:
    """``cpr_zarr.core.catalog`` -> ``core.catalog``; the longest module prefix of a name."""
    if name != "cpr_zarr" and not name.startswith("cpr_zarr."):
        return None
    parts = name.split(".")[1:]
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts = parts[:-1]
    return "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every cpr_zarr module ``path`` imports, with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from cpr_zarr.core import catalog` imports a module
                sub = f"{node.module}.{alias.name}"
                found.append(
                    (node.lineno, sub if _resolve(sub) != _resolve(node.module) else node.module)
                )
    return [(line, m) for line, name in found if (m := _resolve(name)) is not None]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if m not in EXEMPT and _position(m) is None)
    assert not missing, (
        f"Modules not placed in a layer: {missing}. Add each to LAYERS in {__file__} where it "
        "belongs (bottom to top: base, model, storage, core, facade, prefect, outer)."
    )


def test_imports_point_down() -> None:
    upward = []
    for module, path in MODULES.items():
        here = _position(module)
        if module in EXEMPT or here is None:
            continue
        for line, imported in _imports(path):
            there = _position(imported)
            if imported == module or there is None or (module, imported) in ALLOWED:
                continue
            if there >= here:  # a higher layer, or later in the same layer
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not upward, (
        "Imports that point up (or sideways to a later module of the same layer):\n  "
        + "\n  ".join(upward)
        + "\nMove what is shared down (a public name of the lower module), or move the "
        "importer up; see LAYERS in tests/test_layers.py."
    )


def _private_definitions() -> dict[str, set[str]]:
    """Private names each module defines: top-level names and attributes set on ``self``."""
    defined: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
        defined[module] = {n for n in names if n.startswith("_") and not n.startswith("__")}
    return defined


def test_no_module_uses_another_modules_private_names() -> None:
    defined = _private_definitions()
    uses = []
    for module, path in MODULES.items():
        own = defined[module]
        elsewhere = set().union(*(names for m, names in defined.items() if m != module)) - own
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("cpr_zarr")
            ):
                uses += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in elsewhere
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                uses.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses .{node.attr}")
    assert not uses, (
        "Private names used outside the module that defines them:\n  "
        + "\n  ".join(uses)
        + "\nMake the name public in the module that owns it (and list it in __all__), or "
        "move the code that needs it there."
    )


@pytest.mark.parametrize(
    "code",
    [
        "import cpr_zarr",
        "import cpr_zarr.store",
        "import cpr_zarr.core.writer, cpr_zarr.core.reader, cpr_zarr.core.verify",
        "import cpr_zarr.storage",
    ],
)
def test_the_storage_and_data_layers_do_not_import_prefect(code: str) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print('prefect' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False", f"`{code}` imported prefect"
