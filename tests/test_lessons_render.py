"""Every stored lesson notebook renders as a learner sees it: real markdown, one title, tables and LaTeX intact.

The notebooks are rendered with nbconvert (HTML and markdown exporters, no execution), the way Jupyter,
GitHub and nbviewer show them. The build once kept the ``# `` comment prefix of the sources on every
markdown line, so that each line of prose became a top-level heading and tables, formulas and diagrams
broke; these tests catch that and its relatives.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


class _Elements(HTMLParser):
    """The text of every element of the given tags, in document order, e.g. ``[("h1", "01 · Boxes")]``."""

    def __init__(self, tags):
        super().__init__(convert_charrefs=True)
        self.tags, self.found, self._open = set(tags), [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.tags:
            self._open.append([tag, ""])

    def handle_data(self, data):
        for item in self._open:
            item[1] += data

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            self.found.append(tuple(self._open.pop()))


def _elements(body: str, *tags: str) -> list[tuple[str, str]]:
    parser = _Elements(tags)
    parser.feed(body)
    return parser.found


def _markdown_only(nb):
    """A copy of ``nb`` holding only its markdown cells (so outputs cannot add headings or tables)."""
    return nbformat.v4.new_notebook(cells=[c for c in nb.cells if c.cell_type == "markdown"], metadata=nb.metadata)


def _html(nb) -> str:
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    return body


def _table_count(markdown: str) -> int:
    """Markdown tables: a ``| ... |`` row directly followed by a ``|---|`` delimiter row."""
    lines = markdown.splitlines()
    delimiter = re.compile(r"\s*\|[\s:|-]+\|\s*$")
    return sum(1 for a, b in zip(lines, lines[1:]) if a.lstrip().startswith("|") and delimiter.match(b))


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=IDS)
def lesson(request):
    nb = nbformat.read(request.param, as_version=4)
    return request.param, nb, _html(_markdown_only(nb))


def test_every_notebook_is_checked():
    assert len(NOTEBOOKS) >= 16


def test_exactly_one_title(lesson):
    """One top-level heading per notebook: the first cell's ``NN · topic`` title, NN from the file name."""
    path, nb, _ = lesson
    full = _html(nb)  # the whole notebook, outputs included
    h1 = [text for _, text in _elements(full, "h1")]
    assert len(h1) == 1, f"{path.name}: {len(h1)} top-level headings, e.g. {h1[:4]}"
    title = h1[0].rstrip("¶").strip()
    assert title.startswith(f"{path.stem[:2]} · "), f"{path.name}: the title {title!r} does not start with its number"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: the title is not cell 0"


def test_no_commented_markdown(lesson):
    """No markdown cell is all comment-looking lines: a heading cell also says something in prose."""
    path, nb, _ = lesson
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        lines = [line for line in cell.source.splitlines() if line.strip()]
        assert lines, f"{path.name} cell {i}: an empty markdown cell"
        assert not all(line.startswith("#") for line in lines), (
            f"{path.name} cell {i}: every line starts with '#' (a comment prefix left in, or a heading with no text)"
        )


def test_tables_and_latex_survive(lesson):
    """Rendered to markdown, no line starts with ``# |`` or ``# $``; every table becomes an HTML table; every
    ``$...$`` formula reaches MathJax untouched (not inside a heading)."""
    path, nb, body = lesson
    markdown, _ = nbconvert.MarkdownExporter().from_notebook_node(_markdown_only(nb))
    for line in markdown.splitlines():
        assert not re.match(r"#+ [|$]", line), f"{path.name}: a table row or formula rendered as a heading: {line!r}"
    source = "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    tables = _table_count(source)
    assert len(_elements(body, "table")) == tables, f"{path.name}: {tables} markdown tables, rendered differently"
    text = html.unescape(re.sub(r"<[^>]+>", "", body))
    headings = " ".join(t for _, t in _elements(body, "h1", "h2", "h3", "h4"))
    for formula in re.findall(r"\$\$?[^$]+\$\$?", source):
        assert formula in text, f"{path.name}: the formula {formula!r} did not reach the page intact"
        assert formula not in headings, f"{path.name}: the formula {formula!r} is inside a heading"


def test_fenced_blocks_render_as_code(lesson):
    """A fenced block in markdown (e.g. the full-model lesson's diagram) renders as a <pre> block, intact."""
    path, nb, body = lesson
    fence = re.compile(r"```[^\n]*\n(.*?)```", re.S)
    blocks = [m for c in nb.cells if c.cell_type == "markdown" for m in fence.findall(c.source)]
    pre = [text for _, text in _elements(body, "pre")]
    assert len(pre) == len(blocks), f"{path.name}: {len(blocks)} fenced blocks, {len(pre)} <pre> blocks rendered"
    for block, rendered in zip(blocks, pre):
        assert block.strip() == rendered.strip(), f"{path.name}: a fenced block changed when rendered"
