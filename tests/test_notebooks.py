"""The teaching notebooks: each runs top to bottom in a fresh kernel, and is committed in a clean state.

Each notebook executes with its small settings (about 20-130 s on one core) in the default test run; the cell
time limit grows with the machine's load, so a busy machine is slow, not failing.
The execution runs on an in-memory copy (the committed file is never rewritten), in the kernel "python3"
(ipykernel in this environment: jupyter_client provides it even when no kernelspec is registered,
and runs it with this interpreter), with notebooks/ as the working directory.
"""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # on a quiet machine; the slowest cell needs about 130 s there


def cell_timeout() -> int:
    """CELL_TIMEOUT_S scaled by the load per core (the 1-minute load average): a machine shared by other jobs
    runs every cell slower by about that factor. Whole seconds: nbclient's timeout is an int trait."""
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else 1.0
    return math.ceil(CELL_TIMEOUT_S * max(1.0, load))
KERNEL_START_TIMEOUT_S = 180  # a loaded machine can take a while to start a kernel
MAX_BYTES = 2_000_000  # figures must render on GitHub; keep outputs small (low dpi, few images)


def read(path: Path):
    return nbformat.read(path, as_version=4)


def describe(index: int, cell) -> str:
    return f"cell {index} ({cell.cell_type}):\n{cell.source[:500]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_is_explained_first(path):
    cells = read(path).cells
    assert cells and cells[0].cell_type == "markdown", f"{path.name} must open with a markdown cell"
    for i, cell in enumerate(cells):
        if cell.cell_type == "code":
            before = cells[i - 1]
            assert before.cell_type == "markdown" and before.source.strip(), (
                f"{path.name}: code cell {i} is not preceded by a markdown explanation\n{describe(i, cell)}")
            assert cell.source.strip(), f"{path.name}: empty code cell {i}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_one_clean_run(path):
    """Outputs are committed (figures render on GitHub), come from one top-to-bottom run, hold no errors."""
    assert path.stat().st_size <= MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
    code = [(i, cell) for i, cell in enumerate(read(path).cells) if cell.cell_type == "code"]
    counts = [cell.execution_count for _, cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)}: run it top to bottom in a fresh kernel")
    for i, cell in code:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, (f"{path.name}: committed error output {errors[0].ename}: {errors[0].evalue}\n"
                            f"{describe(i, cell)}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path):
    nb = read(path)
    client = nbclient.NotebookClient(nb, timeout=cell_timeout(), startup_timeout=KERNEL_START_TIMEOUT_S,
                                     kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # its message holds the cell's source and traceback
        pytest.fail(f"{path.name}: a cell failed\n{e}", pytrace=False)


SAMPLERS = {"generate", "sample_tokens", "animate"}          # calls that sample, by name
APPS = {"inpaint", "outpaint", "edit", "interpolate", "enrich"}  # ... and the apps, as apps.<name>


def sampling_calls(tree) -> list:
    """The calls of a notebook's code that sample: generate, sample_tokens, animate, pipe(...) and apps.<app>."""
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
        if name in SAMPLERS or name == "pipe" or (name in APPS and owner == "apps"):
            calls.append(node)
    return calls


def dicts_with_order(tree) -> set[str]:
    """Names assigned a dict (literal or dict(...)) that holds an "order" key: ``**name`` passes the order."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            keys = ([k.value for k in value.keys if isinstance(k, ast.Constant)] if isinstance(value, ast.Dict)
                    else [k.arg for k in value.keywords] if isinstance(value, ast.Call) and
                    getattr(value.func, "id", None) == "dict" else [])
            if "order" in keys:
                names.add(node.targets[0].id)
    return names


def passes_order(call, named: set[str]) -> bool:
    """Whether a call gives ``order=``, or ``**name`` of a dict that holds an order (``named``)."""
    return any(k.arg == "order" or (k.arg is None and getattr(k.value, "id", None) in named) for k in call.keywords)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_sampling_call_names_its_order(path):
    """What runs is written where the learner reads it: no sampling call leaves the order to a model's default
    (``order=`` given, or ``**settings`` of a dict in the notebook that holds one)."""
    cells = [cell for cell in read(path).cells if cell.cell_type == "code"]
    tree = ast.parse("\n".join(cell.source for cell in cells))
    named = dicts_with_order(tree)
    for call in sampling_calls(tree):
        assert passes_order(call, named), (
            f"{path.name}: a sampling call leaves the order to the model's default: {ast.unparse(call)[:200]}")


def test_the_order_test_catches_a_call_without_an_order():
    tree = ast.parse('s = dict(order="random")\npipe(x, **s)\napps.inpaint(pipe, x, m, 1, order="entropy")\n'
                     'F.interpolate(x, size=4)\nmodel.generate(y, cfg=2)')
    named = dicts_with_order(tree)
    missing = [ast.unparse(c) for c in sampling_calls(tree) if not passes_order(c, named)]
    assert missing == ["model.generate(y, cfg=2)"]
