"""Notebooks are committed clean: no outputs, no execution counts, no machine paths.

Outputs of a notebook depend on the machine and the data it last ran on; they belong in
no commit. ``tests/test_e2e_kedro.py::test_notebook_tour_executes`` runs the tour.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# an absolute path of one machine inside a cell: /home/<user>, /Users/<user>, /tmp/..., C:\
MACHINE_PATH = re.compile(r"(?<![\w.])(/home/|/Users/|/tmp/|/work/|[A-Za-z]:\\\\)")


def test_notebooks_folder_holds_the_tour():
    assert "weightspace_tour.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernel must be python3"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    paths = [i for i, cell in enumerate(nb.cells) if MACHINE_PATH.search(cell.source)]
    assert not paths, f"{path.name}: cells {paths} hold an absolute path of one machine"
