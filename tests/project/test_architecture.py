"""The shape of the code: no import cycle, the packages and their rooms import only downwards, no torch inside
Orthanc, no crowded folder.

Every import statement counts, module-level, inside functions and under ``TYPE_CHECKING`` alike: a cycle
that only lazy imports hide is still two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

PACKAGES = ("lesion_engine", "orthanc_plugin", "training", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (the most specific known module of each import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            module = resolve(target)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            # A package's own __init__ importing one of its modules is no cycle with that module's parent link.
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)  # other tests of this process run with the usual limit
    return out


def test_the_import_walk_sees_the_imports() -> None:
    graph = import_graph()
    assert "lesion_engine.errors" in graph["orthanc_plugin.node.settings"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("lesion_engine", ("orthanc_plugin", "training", "benchmarks")),
        ("orthanc_plugin", ("training", "benchmarks")),
        ("training", ("orthanc_plugin", "benchmarks")),
    ],
)
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in forbidden
    )
    assert not wrong, wrong


# The modules Orthanc's embedded Python loads: the plugin, its REST API, change follower, queue, rules.
IN_ORTHANC = (
    "orthanc_plugin.plugin",
    "orthanc_plugin.admin.routes",
    "orthanc_plugin.intake.changes",
    "orthanc_plugin.rules",
    "orthanc_plugin.intake.studies",
    "orthanc_plugin.node.settings",
    "orthanc_plugin.jobqueue",
)


def test_the_modules_inside_orthanc_import_no_torch() -> None:
    code = (
        "import sys\n"
        f"for name in {IN_ORTHANC!r}:\n"
        "    __import__(name)\n"
        "heavy = sorted(m for m in ('torch', 'highdicom', 'SimpleITK', 'scipy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"imported inside Orthanc: {done.stdout.strip()}"


# The rooms of each package, bottom first: a module may import its own room and the rooms before it, never
# one after it. A module directly in the package (``lesion_engine.engine``) is a room of its own; the
# package's ``__init__`` belongs to the first room.
ROOMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "lesion_engine": (
        ("", "errors", "logsetup"),
        ("config",),
        ("intake",),
        ("anatomy",),
        ("model",),
        ("results",),
        ("labels",),
        ("engine",),
        ("cli",),
    ),
    "orthanc_plugin": (
        ("",),
        ("node",),
        ("rules",),
        ("jobqueue",),
        ("cluster",),
        ("intake",),
        ("models",),
        ("worker",),
        ("admin",),
        ("plugin", "launch"),
        ("cli",),
        ("entry",),
    ),
    "training": (
        ("",),
        ("synth",),
        ("datasets",),
        ("artifact",),
        ("evaluation",),
        ("fit",),
        ("cli", "default_model"),
    ),
}


def _room(module: str) -> tuple[str, str]:
    """(package, room) of a project module: its first two name parts ('' for the package itself)."""
    parts = module.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


def room_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a room after the importer's own, and modules in no declared room."""
    rank = {
        (package, room): index
        for package, rooms in ROOMS.items()
        for index, names in enumerate(rooms)
        for room in names
    }
    wrong = []
    for module, targets in graph.items():
        here = _room(module)
        if here[0] not in ROOMS:
            continue
        if here not in rank:
            wrong.append(f"{module}: in no room of ROOMS")
            continue
        for target in targets:
            there = _room(target)
            if there[0] == here[0] and rank.get(there, -1) > rank[here]:
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def test_rooms_import_only_earlier_rooms() -> None:
    wrong = room_violations(import_graph())
    assert not wrong, "imports of a later room: " + "; ".join(wrong)


def test_the_room_check_sees_a_wrong_import() -> None:
    """intake may not use the model; the model may use intake; a module outside every room is named."""
    graph = {
        "lesion_engine.intake.loading": {"lesion_engine.model.networks"},
        "lesion_engine.model.networks": {"lesion_engine.intake.series"},
        "lesion_engine.stray": set(),
    }
    assert room_violations(graph) == [
        "lesion_engine.intake.loading -> lesion_engine.model.networks",
        "lesion_engine.stray: in no room of ROOMS",
    ]


MAX_MODULES_PER_FOLDER = 15


def test_no_folder_holds_more_than_15_modules() -> None:
    folders: dict[Path, int] = {}
    for package in (*PACKAGES, "tests"):
        for path in (REPO / package).rglob("*.py"):
            if "data" not in path.relative_to(REPO).parts:
                folders[path.parent] = folders.get(path.parent, 0) + 1
    crowded = {str(f.relative_to(REPO)): n for f, n in folders.items() if n > MAX_MODULES_PER_FOLDER}
    assert not crowded, f"folders of more than {MAX_MODULES_PER_FOLDER} modules: {crowded}"


def test_the_readme_layout_names_every_room() -> None:
    """The README's "Layout" shows each room (a folder, or a module of its own) of every package."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = []
    for package, rooms in ROOMS.items():
        for room in (name for names in rooms for name in names if name):
            shown = f"{room}/" if (REPO / package / room).is_dir() else f"{room}.py"
            if shown not in layout:
                missing.append(f"{package}/{shown}")
    for folder in (REPO / package for package in ROOMS):
        for sub in folder.rglob("__init__.py"):
            if sub.parent != folder and "data" not in sub.parts and f"{sub.parent.name}/" not in layout:
                missing.append(str(sub.parent.relative_to(REPO)))
    assert not missing, f"rooms missing from the README's Layout: {missing}"


MAX_FUNCTION_LINES = 80


def long_functions(paths: list[Path], root: Path) -> list[str]:
    """Functions (methods and nested ones too) of more than MAX_FUNCTION_LINES lines, def line to last line."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_outside_the_tests_is_longer_than_80_lines(tmp_path: Path) -> None:
    assert not long_functions(sorted(_modules().values()), REPO)
    # The check itself sees a long function.
    sample = tmp_path / "sample.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    sample.write_text(f"def f() -> None:\n{body}", encoding="utf-8")
    assert long_functions([sample], tmp_path) == [f"sample.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
