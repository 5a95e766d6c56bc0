"""Every notebook in ``notebooks/`` (the two tutorials and the dashboard) runs end to end.

``pytest --nbval-lax`` executes each notebook in a subprocess (outputs are not compared: the
notebooks are committed without outputs). ``CB_TUTORIAL_SMALL=1`` makes the decision-branch
tutorial skip its 1M-row synthetic catalog and use fewer repetitions; both notebooks use the
committed default catalog ``data/demo``. Takes roughly 20-30 s on two CPU cores.

``notebooks/dashboard.ipynb`` also runs here (its app on the default catalog); its behaviour in a
browser is tested in tests/test_dashboard_browser.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
TUTORIALS = ["tutorial_search_loop.ipynb", "tutorial_decision_branches.ipynb"]
ALL_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))

pytest.importorskip("nbval")


def test_notebooks_are_saved_without_outputs():
    import nbformat

    assert set(TUTORIALS) | {"dashboard.ipynb"} <= set(ALL_NOTEBOOKS)
    for name in ALL_NOTEBOOKS:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} is saved with outputs"


def test_all_notebooks_run_under_nbval():
    env = dict(os.environ, CB_TUTORIAL_SMALL="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env.pop("CB_CATALOG", None)  # the default catalog: the tutorials' ground truth needs the shapes world
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(NOTEBOOKS), "--nbval-kernel-name", "python3",
         *(str(NOTEBOOKS / name) for name in ALL_NOTEBOOKS)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
