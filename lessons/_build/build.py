"""Build the lesson notebooks from their sources and run them to store their outputs.

    python lessons/_build/build.py                 # every lesson: write lessons/NN_topic.ipynb, run it (full mode)
    python lessons/_build/build.py 04 10           # only these lessons
    python lessons/_build/build.py --no-run 04     # write the notebook without outputs
    python lessons/_build/build.py --quick 04      # run in quick mode (what CI does; outputs not for keeping)
    python lessons/_build/build.py --text-only 04  # copy edited cell text into the stored notebook, keeping
                                                   # its outputs (only when the cells are the same in number
                                                   # and kind, and the edit does not change what they print)

A source is lessons/_build/src/NN_topic.py, in Jupytext's "percent" format so that it stays a valid
Python file: cells start at lines beginning with ``# %%``; ``# %% [markdown]`` starts a markdown cell
whose every line is commented (``# text`` or a bare ``#``) and becomes the markdown ``text`` in the
notebook; ``# %% tags=exercise-1`` gives the cell tags (comma-separated). Wall times go to timings.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

BUILD = Path(__file__).resolve().parent
LESSONS = BUILD.parent
SRC = BUILD / "src"


def markdown_text(lines: list[tuple[int, str]], where: str = "<source>") -> str:
    """The markdown of one cell from its commented source lines ``[(line number, line), ...]``.

    ``# text`` gives ``text`` and a bare ``#`` an empty line; blank lines may only follow the text (they
    separate cells). Raises ValueError naming ``where`` and the line for any other line, which would
    otherwise reach the notebook with its comment prefix kept or lost.
    """
    while lines and not lines[-1][1].strip():
        lines = lines[:-1]
    out = []
    for number, line in lines:
        if line.startswith("# "):
            out.append(line[2:])
        elif line.rstrip() == "#":
            out.append("")
        else:
            raise ValueError(f"{where}:{number}: markdown lines start with '# ' or are a bare '#': {line[:60]!r}")
    return "\n".join(out)


def parse_source(text: str, name: str = "<source>") -> nbformat.NotebookNode:
    """The notebook for one source file (see the module docstring for the format).

    Raises ValueError naming ``name`` and the line when a markdown line is not commented.
    """
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    kind, tags, lines = None, [], []

    def flush():
        body = markdown_text(lines, name) if kind == "markdown" else "\n".join(lines).strip("\n")
        if kind is None or not body:
            return
        cell = nbformat.v4.new_markdown_cell(body) if kind == "markdown" else nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)

    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("# %%"):
            flush()
            header = line[4:].strip()
            kind = "markdown" if header.startswith("[markdown]") else "code"
            m = re.search(r"tags=([\w,\-]+)", header)
            tags = m.group(1).split(",") if m else []
            lines = []
        elif kind == "markdown":
            lines.append((number, line))
        else:
            lines.append(line)
    flush()
    # stable cell ids make diffs of rebuilt notebooks small
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    return nb


def run_notebook(nb: nbformat.NotebookNode, quick: bool, timeout: int = 3600) -> float:
    """Execute ``nb`` in place in lessons/ (full mode unless ``quick``); return the wall time in s."""
    env_before = os.environ.get("MINIMASKRCNN_QUICK")
    os.environ["MINIMASKRCNN_QUICK"] = "1" if quick else "0"
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(LESSONS)}})
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start
    finally:
        if env_before is None:
            os.environ.pop("MINIMASKRCNN_QUICK", None)
        else:
            os.environ["MINIMASKRCNN_QUICK"] = env_before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all)")
    parser.add_argument("--no-run", action="store_true", help="write the notebooks without running them")
    parser.add_argument("--quick", action="store_true", help="run in quick mode and do not keep the notebook")
    parser.add_argument("--text-only", action="store_true",
                        help="update the stored notebook's cell text, keep its outputs")
    args = parser.parse_args(argv)

    sources = sorted(SRC.glob("*.py"))
    if args.lessons:
        sources = [s for s in sources if any(s.stem.startswith(k) for k in args.lessons)]
    timings_path = BUILD / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for src in sources:
        nb = parse_source(src.read_text(), name=str(src.relative_to(LESSONS)))
        out = LESSONS / f"{src.stem}.ipynb"
        if args.text_only:
            stored = nbformat.read(out, as_version=4)
            kinds = lambda book: [(c.cell_type, tuple(c.get("metadata", {}).get("tags", []))) for c in book.cells]
            if kinds(stored) != kinds(nb):
                print(f"{src.stem}: the cells changed in number or kind; run it instead", flush=True)
                return 1
            for old, new in zip(stored.cells, nb.cells):
                old.source = new.source
            nbformat.write(stored, out)
            print(f"{src.stem}: text updated", flush=True)
            continue
        if not args.no_run:
            try:
                seconds = run_notebook(nb, quick=args.quick)
            except CellExecutionError as e:
                message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
                print(f"{src.stem}: FAILED\n{message[-3000:]}", flush=True)
                return 1
            print(f"{src.stem}: {seconds:.1f} s ({'quick' if args.quick else 'full'})", flush=True)
            timings.setdefault(src.stem, {})["quick" if args.quick else "full"] = round(seconds, 1)
            timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
            if args.quick:
                continue
        nbformat.write(nb, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
