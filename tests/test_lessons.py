"""Every lesson notebook runs top to bottom in quick mode, and its exercise solutions pass its checks.

Each notebook runs once with MINIMASKRCNN_QUICK=1 (fewer iterations, smaller data). Check cells raise
AssertionError when a built-by-hand result differs from the library or a gradcheck fails, so a cell
error is a failed check. After each exercise's check cell (which, unsolved, only says "not attempted")
the test inserts the solution from lessons/solutions/ and the check again, which must then pass.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))


def read_solutions(path: Path) -> dict[str, str]:
    """``{"exercise-1": source, ...}`` from a solutions file whose blocks start with ``# %% exercise-N``."""
    blocks, name, lines = {}, None, []
    for line in path.read_text().splitlines():
        m = re.match(r"# %% (exercise-\w+)", line)
        if m:
            if name:
                blocks[name] = "\n".join(lines).strip()
            name, lines = m.group(1), []
        elif name:
            lines.append(line)
    if name:
        blocks[name] = "\n".join(lines).strip()
    return blocks


def with_solutions(nb, solutions: dict[str, str]):
    """A copy of ``nb`` in which each check-N cell is followed by solution N and the check again."""
    out = nbformat.v4.new_notebook(metadata=nb.metadata)
    exercises = set()
    for cell in nb.cells:
        out.cells.append(cell)
        tags = cell.get("metadata", {}).get("tags", [])
        for tag in tags:
            if tag.startswith("exercise-"):
                exercises.add(tag)
            if tag.startswith("check-"):
                name = "exercise-" + tag[len("check-"):]
                assert name in solutions, f"no solution for {name}"
                number = tag[len("check-"):]
                key = int(number) if number.isdigit() else number
                out.cells.append(nbformat.v4.new_code_cell(solutions[name]))
                out.cells.append(nbformat.v4.new_code_cell(cell.source))
                out.cells.append(nbformat.v4.new_code_cell(
                    "import _helpers\n"
                    f"assert _helpers.RESULTS.get({key!r}) == 'correct', "
                    f"'the solution of exercise {number} does not pass its check'"
                ))
    assert exercises <= set(solutions), f"exercises without solutions: {sorted(exercises - set(solutions))}"
    return out


def test_every_lesson_is_found():
    assert len(NOTEBOOKS) >= 1
    for nb_path in NOTEBOOKS:
        assert (LESSONS / "solutions" / f"{nb_path.stem}.py").exists() or not _has_exercises(nb_path), nb_path.name


def _has_exercises(nb_path: Path) -> bool:
    nb = nbformat.read(nb_path, as_version=4)
    return any(t.startswith("exercise-") for c in nb.cells for t in c.get("metadata", {}).get("tags", []))


@pytest.mark.slow
@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_runs_and_checks_pass(nb_path: Path, monkeypatch):
    monkeypatch.setenv("MINIMASKRCNN_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(nb_path, as_version=4)
    solutions_path = LESSONS / "solutions" / f"{nb_path.stem}.py"
    if solutions_path.exists():
        nb = with_solutions(nb, read_solutions(solutions_path))
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # the message holds the cell and traceback
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # drop IPython's colours
        pytest.fail(f"{nb_path.name}: a cell failed\n{message[-6000:]}")


def _parse_source():
    """``parse_source`` of lessons/_build/build.py (the notebooks are generated from its sources)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lessons_build", LESSONS / "_build" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_source


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_source(nb_path: Path):
    """The stored notebook holds the text of lessons/_build/src/<name>.py (rebuild after editing it)."""
    src = LESSONS / "_build" / "src" / f"{nb_path.stem}.py"
    assert src.exists(), f"no source for {nb_path.name}"
    expected = _parse_source()(src.read_text())
    stored = nbformat.read(nb_path, as_version=4)
    assert [c.cell_type for c in stored.cells] == [c.cell_type for c in expected.cells]
    for i, (a, b) in enumerate(zip(stored.cells, expected.cells)):
        assert a.source == b.source, f"{nb_path.name} cell {i} differs from {src.name}: run lessons/_build/build.py"
