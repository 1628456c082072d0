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


def _source_cells(text: str) -> list[tuple[str, list[str], str]]:
    """The cells of a lesson source as written: ``(kind, tags, body)`` with the body's text untouched."""
    cells, header, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if header is not None and body:
            kind = "markdown" if header.startswith("[markdown]") else "code"
            m = re.search(r"tags=([\w,\-]+)", header)
            cells.append((kind, m.group(1).split(",") if m else [], body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            header, lines = line[4:].strip(), []
        else:
            lines.append(line)
    flush()
    return cells


def _commented(markdown: str) -> str:
    """Markdown as the sources write it: every line behind ``# `` (a blank line as a bare ``#``)."""
    return "\n".join("# " + line if line else "#" for line in markdown.split("\n"))


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_source(nb_path: Path):
    """The stored notebook holds the text of lessons/_build/src/<name>.py (rebuild after editing it).

    The comparison runs backwards from the build: each stored markdown cell, commented again line by line,
    must give the source's cell exactly, so a build that left the comment prefix in (or dropped text) fails.
    """
    src = LESSONS / "_build" / "src" / f"{nb_path.stem}.py"
    assert src.exists(), f"no source for {nb_path.name}"
    expected = _source_cells(src.read_text())
    stored = nbformat.read(nb_path, as_version=4)
    assert len(stored.cells) == len(expected), f"{nb_path.name}: {len(stored.cells)} cells, {src.name}: {len(expected)}"
    for i, (cell, (kind, tags, body)) in enumerate(zip(stored.cells, expected)):
        where = f"{nb_path.name} cell {i} differs from {src.name}: run lessons/_build/build.py"
        assert cell.cell_type == kind, where
        assert list(cell.get("metadata", {}).get("tags", [])) == tags, where
        if kind == "markdown":
            assert not cell.source.startswith("# # "), f"{nb_path.name} cell {i}: markdown still has its comment prefix"
            assert _commented(cell.source) == body, where
        else:
            assert cell.source == body, where


def test_build_writes_markdown_without_the_comment_prefix():
    """The build turns ``# text`` source lines into markdown ``text`` and refuses an uncommented line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lessons_build", LESSONS / "_build" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    nb = build.parse_source("# %% [markdown]\n# # Title\n#\n# | a | b |\n# |---|---|\n\n# %%\nx = 1  # kept\n", "t.py")
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[0].source == "# Title\n\n| a | b |\n|---|---|"
    assert nb.cells[1].source == "x = 1  # kept"
    for bad in ("# %% [markdown]\n# # Title\nplain text\n", "# %% [markdown]\n# # Title\n\n# more\n"):
        with pytest.raises(ValueError, match=r"t\.py:3"):
            build.parse_source(bad, "t.py")
