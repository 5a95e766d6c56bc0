"""The numbered pipeline notebooks (``pipeline/0*.ipynb``) run end to end on tiny data.

``pytest --nbval-lax`` executes every notebook in order in a subprocess (outputs are not
compared: the notebooks are committed without outputs). ``CB_PIPELINE_SMALL=1`` shrinks every
step (3,000 catalog items, 10 CLIP steps on 512 images, 512 training pairs, 2 head epochs); the work files
and the catalog go to ``tmp_path``. Takes roughly a minute or two on two CPU cores.

The notebooks run in the ``python3`` Jupyter kernel; jupyter_client starts kernelspecs whose
command is plain ``python`` with the interpreter running pytest (``sys.executable``), so the
venv's own kernelspec is used without installing anything.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "pipeline"

pytest.importorskip("nbval")


def test_pipeline_notebooks_run_small(tmp_path):
    notebooks = sorted(PIPELINE.glob("0*.ipynb"))
    assert [p.name[:2] for p in notebooks] == ["01", "02", "03", "04", "05", "06"]
    catalog = tmp_path / "catalog"
    env = dict(os.environ, CB_PIPELINE_SMALL="1", CB_PIPELINE_WORK=str(tmp_path / "work"),
               CB_PIPELINE_CATALOG=str(catalog), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(PIPELINE), "--nbval-kernel-name", "python3", *map(str, notebooks)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    from clipbranches_widgets import open_catalog

    cat = open_catalog(catalog)
    assert cat.n_items == 3000
    ids, scores = cat.search_text("a red star", k=60)
    assert len(ids) == 60 and len(set(ids.tolist())) == 60
    assert (tmp_path / "work" / "demo-clip" / "open_clip_config.json").is_file()
    assert (catalog / "index").is_dir()
