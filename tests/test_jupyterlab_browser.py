"""The same app inline in JupyterLab: a real JupyterLab server, a notebook cell run in headless
Chromium, and a search through the widget (the anywidget grid renders in the lab, not only in Voilà).
Skipped without Chromium unless ``CB_REQUIRE_BROWSER=1`` (CI), like the dashboard test."""

import nbformat
import pytest

from dashboard_driver import chromium_page, jupyterlab_server, tile_state
from test_dashboard_browser import TIMEOUT_MS, _require_browser, _wait_tiles

from clipbranches_widgets import open_catalog
from clipbranches_widgets.catalog import DEFAULT_CATALOG


def test_search_app_works_inline_in_jupyterlab(tmp_path):
    _require_browser()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "from clipbranches_widgets.widgets import SearchApp\n"
        f"SearchApp({str(DEFAULT_CATALOG)!r})")]
    root = tmp_path / "lab"
    root.mkdir()
    nbformat.write(nb, root / "app.ipynb")
    expected, _ = open_catalog(DEFAULT_CATALOG).search_text("a blue ring", k=60)

    with jupyterlab_server(root, log_path=tmp_path / "lab.log") as url, chromium_page() as page:
        page.goto(url + "lab/tree/app.ipynb", timeout=TIMEOUT_MS)
        page.wait_for_selector(".jp-Notebook .jp-Cell .cm-content", timeout=TIMEOUT_MS)
        # Run the cell (Ctrl+Enter) once the kernel is connected. Lab can report "idle" a moment
        # before the kernel's websocket is up, and a cell run then is dropped without a prompt
        # number, so check that it started ([*] or [1]) and try again if not.
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                               state="attached", timeout=TIMEOUT_MS)
        started = ("() => { const p = document.querySelector('.jp-Notebook .jp-Cell .jp-InputPrompt');"
                   " return p !== null && /\\[[*0-9]+\\]/.test(p.textContent); }")
        for _attempt in range(5):
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()  # re-queried: lab re-renders
            page.keyboard.press("Control+Enter")  # run in place (no new cell)
            try:
                page.wait_for_function(started, timeout=5000)
                break
            except Exception:
                continue
        try:
            page.wait_for_selector(".cb-app .cb-query input", timeout=TIMEOUT_MS)
        except Exception:
            page.screenshot(path=str(tmp_path / "jupyterlab-failed.png"))
            raise AssertionError("the app did not appear in JupyterLab; see "
                                 f"{tmp_path / 'jupyterlab-failed.png'} and {tmp_path / 'lab.log'}:\n"
                                 + (tmp_path / "lab.log").read_text()[-3000:]) from None
        page.fill(".cb-query input", "a blue ring")
        page.click(".cb-search")
        _wait_tiles(page, 60, int(expected[0]))
        assert [i for i, _ in tile_state(page)] == expected.tolist()
        page.locator(".cb-tile").nth(0).click()
        assert tile_state(page)[0][1] == "pos"
        page.screenshot(path=str(tmp_path / "jupyterlab.png"))
        assert not page.query_selector(".jp-OutputArea-output[data-mime-type*='error']")
