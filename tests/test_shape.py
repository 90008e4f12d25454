"""The package's shape: stage folders, no import cycles, nothing importing what builds on it, no branch on the
kind of head outside the models (and the command line that names them)."""

from __future__ import annotations

import ast
from pathlib import Path

import geoscope
from geoscope.models.heads import HEADS
from geoscope.models.place_clip import PLACES_FROM

PACKAGE = Path(geoscope.__file__).parent
TOP_LEVEL_MAX = 10
"""Modules at the package top besides ``__init__`` and ``__main__``; the rest live in stage folders."""
HEAD_KINDS = {*HEADS, *PLACES_FROM}
"""Every name a kind of head goes by: its registry name, and what its network reads of a place."""
HEAD_KIND_WORDS = ("head", "kind", "places_from")
"""What the other side of a comparison with a head kind says when it is a branch on the kind of head."""
BRANCHES_ALLOWED_IN = ("models", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each geoscope module → the geoscope modules it imports, at any depth (inside functions too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
                found.update(submodules if len(submodules) == len(node.names) else [target, *submodules])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_even_inside_functions():
    graph = import_graph()
    assert graph.get("geoscope.encoders.image")  # the graph is read
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_few_modules_at_the_package_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= TOP_LEVEL_MAX, top


def head_kind_branches(source: str) -> list[str]:
    """Comparisons of something about a head (its ``head``, ``kind`` or ``places_from``) with a head kind's name,
    and ``isinstance`` tests with a head class, in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            names = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
            about = " ".join(ast.get_source_segment(source, o) or "" for o in operands
                             if not isinstance(o, ast.Constant | ast.Tuple | ast.List | ast.Set))
            if names & HEAD_KINDS and any(word in about for word in HEAD_KIND_WORDS):
                found.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            classes = {c.id for c in ast.walk(node.args[1]) if isinstance(c, ast.Name)} | \
                {c.attr for c in ast.walk(node.args[1]) if isinstance(c, ast.Attribute)}
            if classes & {head.__name__ for head in HEADS.values()}:
                found.append(ast.get_source_segment(source, node))
    return found


def test_no_branch_on_the_kind_of_head_outside_the_models():
    """A new head is a file in ``models/heads`` and a line in its registry: nothing else asks which head it is.
    (Before the heads had one protocol: 7, in ``training/fit.py``, ``training/loop.py`` and ``bundle.py``.)"""
    found = [f"{path.relative_to(PACKAGE)}: {branch}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.relative_to(PACKAGE).parts[0] not in BRANCHES_ALLOWED_IN
             for branch in head_kind_branches(path.read_text(encoding="utf-8"))]
    assert found == []


def test_the_branch_finder_finds_branches():
    source = """
if options.train.head == "gps": pass
gps = result.config.head == "gps"
if (training.get("config") or {}).get("head") != "gps": pass
if refiner.get("kind") != "gps": pass
if config.places_from in ("names", "coordinates"): pass
if isinstance(model, heads.ZeroShotHead): pass
if level == "place" or scheme.kind == "column" or name == "gps": pass
"""
    assert len(head_kind_branches(source)) == 6


def test_the_models_import_nothing_that_builds_on_them():
    """``models/`` (image side, fusion, heads) is read by bundle, predict, training and answer, never the reverse."""
    above = ("predict", "loading", "bundle", "training", "answer", "evaluate", "serve", "outputs", "report", "cli")
    graph = import_graph()
    found = {module: sorted(d for d in deps if d.split(".")[1] in above)
             for module, deps in graph.items() if module.startswith("geoscope.models")}
    assert {m: d for m, d in found.items() if d} == {}


STAGES = (("errors", "fileio", "paths", "threads", "distributed", "images"), ("geo",), ("data",), ("encoders",),
          ("features",), ("models",), ("answer",), ("bundle",), ("training",), ("predict", "loading"),
          ("investigate", "evaluate", "outputs", "report", "serve"), ("cli", "__main__"))
"""The pipeline's order: a module imports only from its own stage or earlier ones (the package's
``__init__``, which holds the version and the lazy ``load``, is read by every stage)."""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a later stage of the pipeline than the importer's."""
    rank = {name: i for i, names in enumerate(STAGES) for name in names}

    def stage(module: str) -> int:
        return rank[module.split(".")[1]] if "." in module else -1

    return sorted(f"{m} -> {d}" for m, deps in graph.items() if "." in m for d in deps if stage(d) > stage(m))


def test_every_module_has_its_place_in_the_pipeline():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    placed = {name for names in STAGES for name in names}
    assert top - placed == {"__init__"}


def test_no_module_imports_a_later_stage_of_the_pipeline():
    assert upward_imports({"geoscope.geo.x": {"geoscope.serve.y"}}) == ["geoscope.geo.x -> geoscope.serve.y"]
    assert upward_imports(import_graph()) == []
