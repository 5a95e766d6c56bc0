"""The built wheel ships the demo catalog and, installed, opens and searches it offline from any folder.

The wheel is built from a copy of the checkout's build inputs (the root files, the package, and
``data/demo``), not in the checkout itself: an in-tree build writes ``build/`` and the egg-info
into the working tree, which concurrent test runs in the same checkout would share. The copy gets
a fake ``data/demo/index/`` so that leaving the box index cache out of the wheel is tested even in
a clean clone (where that cache does not exist yet).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
PACKAGED = "clipbranches_widgets/_data/demo/"
IGNORED = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info", ".*")


def _demo_files() -> list[str]:
    """The demo catalog's own files (manifest.json and every file it lists), relative to data/demo."""
    return ["manifest.json", *json.loads((DEMO / "manifest.json").read_text())["files"]]


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel path, the folder it was installed into with ``pip install --target``)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for path in REPO.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, src / path.name)
    shutil.copytree(REPO / "clipbranches_widgets", src / "clipbranches_widgets", ignore=IGNORED)
    shutil.copytree(DEMO, src / "data" / "demo", ignore=shutil.ignore_patterns("index", ".*"))
    fake_index = src / "data" / "demo" / "index" / "boxindex-0123"
    fake_index.mkdir(parents=True)
    (fake_index / "meta.json").write_text("{}")

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist")])
    (wheel,) = (root / "dist").glob("clipbranches_widgets-*.whl")
    site = root / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)])
    return wheel, site


def test_wheel_ships_the_demo_catalog_without_its_index(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n[len(PACKAGED):] for n in names if n.startswith(PACKAGED)}
    assert shipped == set(_demo_files())
    assert not any("/index/" in n for n in names)
    assert not any(n.startswith("data/") for n in names)  # only the package copy, nothing at the top level
    with zipfile.ZipFile(wheel) as zf:  # byte-identical to the committed catalog
        for name in _demo_files():
            assert zf.read(PACKAGED + name) == (DEMO / name).read_bytes(), name


def test_installed_wheel_opens_and_searches_the_default_catalog_offline(built, tmp_path):
    _, site = built
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(site)!r})
        import clipbranches_widgets
        from clipbranches_widgets.catalog import DEFAULT_CATALOG, open_catalog
        cat = open_catalog(DEFAULT_CATALOG)
        ids, scores = cat.search_text("a red star", k=5)
        captions = cat.items.column("caption").to_pylist()
        from clipbranches_widgets.widgets import SearchApp
        app = SearchApp.default(warm_up=False)
        app.query.value = "a red star"
        app.search_button.click()
        print(json.dumps({{"module": clipbranches_widgets.__file__, "default": str(DEFAULT_CATALOG),
                          "n_items": cat.n_items, "captions": [captions[i] for i in ids],
                          "app_catalog": str(app.catalog.path), "app_catalogs": list(app.catalog_select.options),
                          "app_error": app.error.value, "app_tiles": [t["id"] for t in app.grid.tiles],
                          "search_ids": [int(i) for i in ids]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CB_CATALOG")}
    env["HF_HUB_OFFLINE"] = "1"
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    proc = _run([sys.executable, "-c", script], cwd=empty, env=env, timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    installed = (site / "clipbranches_widgets").resolve()
    assert Path(out["module"]).resolve().is_relative_to(installed)  # the wheel's copy, not the checkout's
    assert Path(out["default"]).resolve() == installed / "_data" / "demo"
    assert out["n_items"] == json.loads((DEMO / "manifest.json").read_text())["n_items"]
    assert len(out["captions"]) == 5 and all("red" in c for c in out["captions"]), out["captions"]
    assert sum("star" in c for c in out["captions"]) >= 3, out["captions"]
    assert Path(out["app_catalog"]).resolve() == installed / "_data" / "demo"
    assert out["app_catalogs"] == ["demo"]
    assert out["app_error"] == ""  # opened, and the search ran without an error
    assert out["app_tiles"][:5] == out["search_ids"]


def test_editable_install_reads_the_checkouts_data_demo(built):
    """``pip install -e .`` (what ``make setup`` does) copies no catalog and uses ``data/demo`` in place."""
    from clipbranches_widgets.catalog import DEFAULT_CATALOG

    assert DEFAULT_CATALOG == REPO / "data" / "demo"
    wheel, _ = built
    src, out = wheel.parents[1] / "src", wheel.parents[1] / "editable"
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_editable({str(out)!r})"],
         cwd=src)
    (editable,) = out.glob("*.whl")
    assert not [n for n in zipfile.ZipFile(editable).namelist() if "_data" in n or n.startswith("data/")]
