"""The package's imports point one way: cores -> model -> pipeline -> apps / training / evaluation -> cli.

Every module of minibigr/ (a file, or a sub-package with all its files) has a layer below; a module may import
only from lower layers, sibling imports sit at the top of the file (never inside a function), and nothing imports
the reference implementation.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minibigr"

LAYERS = {
    # files and the algorithmic cores that need nothing else of the package
    "authors": 0, "quantizer": 0, "checkpoint": 0, "shipped": 0, "images": 0, "gan": 0, "data": 0, "cuda_graph": 0,
    "transcoder": 1, "sampler": 1, "lpips": 1, "codes": 1,
    "config": 2,
    "backbone": 3, "tokenizer": 3,
    "model": 4,
    "official": 5,
    "pipeline": 6,
    # what is built on a pipeline: applications, training, evaluation
    "apps": 7, "animation": 7, "train": 7, "evaluate": 7, "probe": 7, "classifier": 7, "inception": 7,
    "demo": 8, "app": 8,
    "cli": 9,
}


def sibling_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported sibling module, whether the import is at the top level) for every import in the file. In a
    sub-package, ``from .x`` is the package's own file, ``from ..x`` a sibling."""
    sibling_level = len(path.relative_to(PACKAGE).parts)
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == sibling_level:
            names = [node.module] if node.module else [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minibigr."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("minibigr.")]
        else:
            continue
        found += [(name.split(".")[0], id(node) in top) for name in names]
    return found


def modules() -> dict[str, list[Path]]:
    """{module: its files}: each file of minibigr/, and each sub-package with all of its files."""
    found = {p.stem: [p] for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return found | {init.parent.name: sorted(init.parent.glob("*.py")) for init in PACKAGE.glob("*/__init__.py")}


def imports(name: str, files: list[Path]) -> list[tuple[str, bool]]:
    """The sibling imports of module ``name`` made by its files, less those between its own files."""
    return [found for path in files for found in sibling_imports(path) if found[0] != name]


def test_every_module_has_a_layer():
    assert set(modules()) == set(LAYERS)


def test_imports_point_down_the_layers_and_sit_at_the_top():
    for module, files in modules().items():
        for name, at_top in imports(module, files):
            assert at_top, f"{module} imports .{name} inside a function: sibling imports go at the top"
            assert LAYERS[name] < LAYERS[module], (
                f"{module} (layer {LAYERS[module]}) imports {name} (layer {LAYERS[name]}): imports point down")


def test_no_import_cycle_and_no_reference():
    graph = {module: {name for name, _ in imports(module, files)} for module, files in modules().items()}
    done, active = set(), []

    def visit(node):
        assert node not in active, "import cycle: " + " -> ".join([*active[active.index(node):], node])
        if node in done:
            return
        active.append(node)
        for target in graph[node]:
            visit(target)
        active.pop()
        done.add(node)

    for node in graph:
        visit(node)
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        assert not any(m == "reference" or m.startswith("reference.") for m in imported), path.name


def test_the_reference_without_numba_names_its_extra():
    blocked = "import sys; sys.modules['numba'] = None; import reference"
    run = subprocess.run([sys.executable, "-c", blocked], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert run.returncode != 0 and '.[reference]' in run.stderr.splitlines()[-1]
