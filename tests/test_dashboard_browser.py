"""The dashboard in a real browser: Voilà serves notebooks/dashboard.ipynb on the default catalog,
headless Chromium (Debian's) is driven by Playwright through the stable ``cb-*`` CSS classes.

Checks a newcomer's path end to end: search a demo concept, 60 tiles in the catalog's own order,
mark tiles, fine-tune, the count equals what the session API computes for the same marks, load
more, switch the model, an empty query shows ``cb-error``. Timings (page open to first grid,
fine-tune click to painted results) and a screenshot go to the test's output folder; set
``CB_BROWSER_RECORD=<folder>`` to also write them there (``benchmarks/bench_dashboard.py`` does).

Without Chromium the test is skipped, except when ``CB_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
where it fails: CI must never pass without running it.
"""

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard_driver import CHROMIUM, chromium_page, stats_count, tile_state, voila_server

from clipbranches_widgets import open_catalog
from clipbranches_widgets.build import DEFAULT_CATALOG
from clipbranches_widgets.demo import concept_mask
from clipbranches_widgets.session import SearchSession

QUERY = "a red star"
TIMEOUT_MS = 120_000  # a cold 2-core CI machine starts a kernel, torch and Numba in the page


def _require_browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM}; .ci/run installs Debian's chromium")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    if not (DEFAULT_CATALOG / "manifest.json").exists():
        pytest.fail(f"the default catalog {DEFAULT_CATALOG} is missing (it is committed; "
                    "rebuild with python -m clipbranches_widgets build-catalog data/demo)")


def _wait_tiles(page, n, first_id=None):
    js = ("([n, first]) => { const t = document.querySelectorAll('.cb-tile');"
          " return t.length >= n && (first === null || Number(t[0].dataset.id) === first); }")
    page.wait_for_function(js, arg=[n, first_id], timeout=TIMEOUT_MS)
    # two animation frames: the tiles are not only in the DOM but painted
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def test_dashboard_search_mark_refine_in_chromium(tmp_path):
    _require_browser()
    catalog = open_catalog(DEFAULT_CATALOG)
    truth = concept_mask(catalog.items, QUERY)
    expected_ids, _ = catalog.search_text(QUERY, k=60)
    timings = {}
    with voila_server(log_path=tmp_path / "voila.log") as url, chromium_page() as page:
        try:
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # a visitor of a running server finds a preheated kernel; the benchmark waits for it
            wait = float(os.environ.get("CB_BROWSER_PREHEAT_WAIT", "0"))
            time.sleep(wait)
            timings["preheat_wait_s"] = wait
            t0 = time.perf_counter()
            page.goto(url, timeout=TIMEOUT_MS)
            page.wait_for_selector(".cb-query input", timeout=TIMEOUT_MS)
            timings["page_to_app_s"] = time.perf_counter() - t0
            page.fill(".cb-query input", QUERY)
            page.click(".cb-search")
            _wait_tiles(page, 60, int(expected_ids[0]))
            timings["page_to_first_grid_s"] = time.perf_counter() - t0

            # 60 tiles, exactly the catalog's own text-search order, none labelled yet
            tiles = tile_state(page)
            assert [i for i, _ in tiles] == expected_ids.tolist()
            assert {lab for _, lab in tiles} == {"none"}
            assert stats_count(page) == 60

            # mark: true red stars positive (one click), the last three tiles negative (two clicks)
            pos = [k for k, (i, _) in enumerate(tiles[:57]) if truth[i]][:20]
            neg = [57, 58, 59]
            for k in pos:
                page.locator(".cb-tile").nth(k).click()
            for k in neg:
                page.locator(".cb-tile").nth(k).click()
                page.locator(".cb-tile").nth(k).click()
            labels = dict(tile_state(page))
            assert all(labels[tiles[k][0]] == "pos" for k in pos)
            assert all(labels[tiles[k][0]] == "neg" for k in neg)
            assert pos, "the demo CLIP found no red star in the top 57"

            # the same marks through the session API give the count the dashboard must show
            session = SearchSession(catalog, random_state=0)
            session.text_search(QUERY, k=60)
            session.label([tiles[k][0] for k in pos], "pos")
            session.label([tiles[k][0] for k in neg], "neg")
            expected = session.refine("branches")

            page.wait_for_selector(".cb-warmup[data-done='1']", state="attached", timeout=TIMEOUT_MS)
            t1 = time.perf_counter()
            page.click(".cb-refine")
            page.wait_for_function(f"() => {{ const s = document.querySelectorAll('.cb-stats[data-count]');"
                                   f" return s.length && s[s.length-1].dataset.count === '{expected.count}'"
                                   f" && document.querySelector('.cb-refine button, button.cb-refine')"
                                   f"; }}", timeout=TIMEOUT_MS)
            _wait_tiles(page, min(15, expected.count), int(expected.ids[0]))
            timings["refine_click_to_painted_s"] = time.perf_counter() - t1
            assert stats_count(page) == expected.count
            shown = tile_state(page)
            assert [i for i, _ in shown] == expected.ids[:len(shown)].tolist()
            marks = {tiles[k][0]: "pos" for k in pos} | {tiles[k][0]: "neg" for k in neg}
            assert all(lab == marks.get(i, "none") for i, lab in shown)  # labels survive the round

            # load more
            before = len(shown)
            if before < expected.count:
                page.click(".cb-more")
                page.wait_for_function(f"() => document.querySelectorAll('.cb-tile').length > {before}",
                                       timeout=TIMEOUT_MS)
                assert [i for i, _ in tile_state(page)] == expected.ids[:len(tile_state(page))].tolist()

            # switch the model to the ensemble and fine-tune again
            page.select_option(".cb-model select", label="Branch ensemble")
            old = stats_count(page)
            page.click(".cb-refine")
            page.wait_for_function("() => !document.querySelector('.cb-refine').disabled"
                                   " && document.querySelector('.cb-stats') !== null", timeout=TIMEOUT_MS)
            page.wait_for_function("() => document.querySelector('.cb-stats pre, .cb-stats')"
                                   ".textContent.toLowerCase().includes('ensemble')", timeout=TIMEOUT_MS)
            assert stats_count(page) is not None and stats_count(page) > 0
            timings["ensemble_count"], timings["branches_count"] = stats_count(page), old

            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)

            # export: a real download of the CSV with every positive of the last round
            page.click(".cb-export-csv")
            link = page.wait_for_selector("a.cb-download", timeout=TIMEOUT_MS)
            with page.expect_download(timeout=TIMEOUT_MS) as dl:
                link.click()
            csv_path = tmp_path / dl.value.suggested_filename
            dl.value.save_as(csv_path)
            rows = list(csv.DictReader(open(csv_path, newline="")))
            assert len(rows) == stats_count(page) and rows[0].keys() >= {"id", "caption", "score"}
            ids = [int(r["id"]) for r in rows]
            assert len(set(ids)) == len(ids) and 0 <= min(ids) and max(ids) < catalog.n_items
            assert ids[:len(tile_state(page))] == [i for i, _ in tile_state(page)]  # same ranking as shown

            # "more like this" on a tile (its ≈ button, shown on hover): that item's neighbours
            item = tile_state(page)[2][0]
            expected_similar, _ = catalog.search_image(item, k=60)
            page.locator(".cb-tile").nth(2).hover()
            page.locator(".cb-tile").nth(2).locator(".cb-similar").click()
            _wait_tiles(page, 60, int(expected_similar[0]))
            assert [i for i, _ in tile_state(page)] == expected_similar.tolist()
            assert expected_similar[0] == item  # an item's own picture is its nearest neighbour

            # an empty query shows a visible error, not a traceback
            page.fill(".cb-query input", "   ")
            page.click(".cb-search")
            page.wait_for_selector(".cb-error", state="visible", timeout=TIMEOUT_MS)
            assert page.inner_text(".cb-error").strip()
            assert "Traceback" not in page.content()
            assert not errors, errors
        except Exception as exc:
            # leave what a person needs to see why: the page as it was, and the server's log
            page.screenshot(path=str(tmp_path / "failed.png"))
            log = (tmp_path / "voila.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{type(exc).__name__}: {exc}\nscreenshot: {tmp_path / 'failed.png'}"
                                 f"\nvoila log (end):\n{log}") from exc

    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=1))
    record = os.environ.get("CB_BROWSER_RECORD")
    if record:
        out = Path(record)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "dashboard.png", out / "dashboard.png")
        with open(out / "dashboard_timings.jsonl", "a") as f:
            f.write(json.dumps(timings) + "\n")
    assert np.isfinite(list(timings.values())).all()
