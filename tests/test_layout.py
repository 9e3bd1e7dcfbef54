"""The house keeps its shape: layers import only downwards, and modules stay small.

The layers follow the pipeline (docs/architecture.md): base modules, then model, index, ingest,
search, tags, the Library facade, and the command line on top. An import from a lower layer up to
a higher one is how a codebase loses its map, so it fails here, with the edge named.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clipsearch"
LAYERS = ["base", "model", "index", "ingest", "search", "tags", "library", "cli"]
BASE = {"errors", "config", "paths", "formats", "failpoints", "blas_threads", "_version"}
# The modules that need torch or open_clip; nothing below ingest may import them, even lazily.
TORCH_SIDE = {"clipsearch.model.embedder", "clipsearch.model.text_export", "clipsearch.model.lean_load",
              "clipsearch.model.prefix_export", "clipsearch.model.vit_torch"}
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("library", "encoders", "photos"):
        return "library"
    if parts[1] in BASE:
        return "base"
    if parts[1] in ("__main__", "serve"):  # the skins: the command line and the web gallery
        return "cli"
    assert parts[1] in LAYERS, f"{module} belongs to no layer: add it to docs/architecture.md and here"
    return parts[1]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clipsearch":
            if node.module == "clipsearch":
                found += [f"clipsearch.{a.name}" for a in node.names if a.name[0].islower()]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "clipsearch"]
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        src = _module(path)
        for target in _imports(path):
            if src != "clipsearch" and LAYERS.index(_layer(target)) > LAYERS.index(_layer(src)):
                upward.append(f"{src} -> {target}")
    assert upward == [], "imports from a lower layer up to a higher one"


def test_the_model_free_layers_never_import_torch_side_modules() -> None:
    model_free = ("base", "index", "search", "tags")
    found = [f"{_module(p)} -> {t}" for p in PACKAGE.rglob("*.py") if _layer(_module(p)) in model_free
             for t in _imports(p) if t in TORCH_SIDE]
    assert found == []


def test_modules_fit_in_a_reading() -> None:
    long = {_module(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_says_what_it_holds() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init.relative_to(PACKAGE.parent)} has no docstring"
