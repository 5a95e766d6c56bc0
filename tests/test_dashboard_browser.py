"""The dashboard in a real browser: Voilà serves notebooks/dashboard.ipynb on the default catalog,
headless Chromium (Debian's) is driven by Playwright through the stable ``cb-*`` CSS classes.

Checks a newcomer's path end to end: search a demo concept, 60 tiles in the catalog's own order,
mark tiles, fine-tune (the default "Automatic" model), the count and the estimate equal what the
session API computes for the same marks, load more, "Label next" shows the session's suggestions
(noted in / not in the answer, the Show toggle on "suggestions to mark"), mark them, fine-tune
again (the estimate now from the marked page), switch the model, an empty query shows
``cb-error``. Timings (page open to first grid, fine-tune click to painted results, "Label next"
click to painted suggestions, the fine-tune after marking them) and a screenshot go to the test's
output folder; set ``CB_BROWSER_RECORD=<folder>`` to also write them there
(``benchmarks/bench_dashboard.py`` does).

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

from dashboard_driver import CHROMIUM, app_timings, chromium_page, estimate_state, stats_count, stats_view, tile_notes, \
    tile_state, view_state, voila_server

from clipbranches_widgets import open_catalog
from clipbranches_widgets.catalog import DEFAULT_CATALOG
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


def _wait_tiles(page, n, first_id=None, count=None):
    """Wait for at least ``n`` tiles, the first one ``first_id``, and (when given) the statistics'
    count ``count``: the grid and the statistics are separate widgets, updated one after the other."""
    js = ("([n, first, count]) => { const t = document.querySelectorAll('.cb-tile');"
          " const s = [...document.querySelectorAll('.cb-stats[data-count]')].pop();"
          " return t.length >= n && (first === null || Number(t[0].dataset.id) === first)"
          " && (count === null || (s && s.dataset.count === String(count))); }")
    page.wait_for_function(js, arg=[n, first_id, count], timeout=TIMEOUT_MS)
    # two animation frames: the tiles are not only in the DOM but painted
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _wait_painted(page):
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _wait_answer(page, result):
    """Wait until the grid shows ``result`` (a RefineResult) as the answer: its count in the
    statistics, the answer view, the estimate, no suggestion notes, its first tiles; then painted."""
    ids = result.ids[:15].tolist()  # the first page (the app's page_size)
    page.wait_for_function(
        "([count, ids]) => { const s = [...document.querySelectorAll('.cb-stats[data-count]')].pop();"
        " if (!s || s.dataset.count !== String(count) || s.dataset.view !== 'answer') return false;"
        " if (!s.querySelector('.cb-estimate')) return false;"
        " const t = [...document.querySelectorAll('.cb-tile')].map(e => Number(e.dataset.id));"
        " return !document.querySelector('.cb-tile[data-note]') && t.length >= ids.length"
        " && ids.every((id, k) => t[k] === id); }",
        arg=[result.count, ids], timeout=TIMEOUT_MS)
    _wait_painted(page)


def _check_estimate(page, result):
    est = estimate_state(page)
    assert est is not None, "no cb-estimate element"
    assert 0 <= est["precision"] <= 1 and 0 <= est["recall"] <= 1, est
    assert est["precision"] == pytest.approx(result.estimate["precision"], abs=1e-4)
    assert est["recall"] == pytest.approx(result.estimate["recall"], abs=1e-4)
    assert est["text"].startswith("Estimated precision") and f"(estimate: {result.estimate['method']})" in est["text"]
    return est


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
            _wait_tiles(page, 60, int(expected_ids[0]), count=60)
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

            # the same marks through the session API give the count the dashboard must show (the
            # app's session is seeded 0 too, and draws its rounds' seeds in the same order)
            session = SearchSession(catalog, random_state=0)
            session.text_search(QUERY, k=60)
            session.label([tiles[k][0] for k in pos], "pos")
            session.label([tiles[k][0] for k in neg], "neg")
            expected = session.refine()  # the selector's default: "auto"

            page.wait_for_selector(".cb-warmup[data-done='1']", state="attached", timeout=TIMEOUT_MS)
            t1 = time.perf_counter()
            page.click(".cb-refine")
            _wait_answer(page, expected)
            timings["refine_click_to_painted_s"] = time.perf_counter() - t1
            assert stats_count(page) == expected.count
            assert page.inner_text(".cb-model-choice").startswith("Model:")
            assert page.get_attribute(".cb-model-choice", "data-model") == expected.model_name
            assert expected.selection["reason"] in page.inner_text(".cb-model-choice")
            _check_estimate(page, expected)
            timings["refine_model"] = expected.model_name
            timings.update({f"refine_{k}_s": v for k, v in app_timings(page).items()})
            shown = tile_state(page)
            assert [i for i, _ in shown] == expected.ids[:len(shown)].tolist()
            marks = {tiles[k][0]: "pos" for k in pos} | {tiles[k][0]: "neg" for k in neg}
            assert all(lab == marks.get(i, "none") for i, lab in shown)  # labels survive the round

            # load more, twice: thumbnails are encoded a page ahead, so every new tile has its picture
            for _ in range(2):
                before = len(tile_state(page))
                if before >= expected.count:
                    break
                page.click(".cb-more")
                page.wait_for_function(f"() => document.querySelectorAll('.cb-tile').length > {before}"
                                       " && [...document.querySelectorAll('.cb-tile')].every(t => t.querySelector('img'))",
                                       timeout=TIMEOUT_MS)
                assert [i for i, _ in tile_state(page)] == expected.ids[:len(tile_state(page))].tolist()

            # "Label next": the session's next page of suggestions, each noted in / not in the answer
            expected_page = session.suggest(60)
            answer = set(expected.ids.tolist())
            t2 = time.perf_counter()
            page.click(".cb-next")
            page.wait_for_function(
                "([n, first]) => { const s = [...document.querySelectorAll('.cb-stats[data-view]')].pop();"
                " const t = document.querySelectorAll('.cb-tile[data-note]');"
                " return s && s.dataset.view === 'suggestions' && t.length === n"
                " && Number(t[0].dataset.id) === first; }",
                arg=[len(expected_page), int(expected_page.ids[0])], timeout=TIMEOUT_MS)
            _wait_painted(page)
            timings["next_click_to_painted_s"] = time.perf_counter() - t2
            timings["refine_plus_next_painted_s"] = timings["refine_click_to_painted_s"] + timings["next_click_to_painted_s"]
            suggested = tile_state(page)
            assert [i for i, _ in suggested] == expected_page.ids.tolist()
            assert {lab for _, lab in suggested} == {"none"}  # never an item already marked
            notes = tile_notes(page)
            assert notes == {i: ("in answer: right?" if i in answer else "not in answer: missed?")
                             for i in expected_page.ids.tolist()}
            assert page.locator(".cb-tile .cb-note").first.is_visible()
            assert stats_view(page) == "suggestions" and view_state(page) == "suggestions to mark"
            assert "Showing suggestions to mark" in page.inner_text(".cb-stats")
            assert stats_count(page) == expected.count  # data-count: still the answer's count

            # mark the page: "All positive", then a click turns each non-red-star negative
            page.click(".cb-all-pos")
            page.wait_for_function("() => [...document.querySelectorAll('.cb-tile')]"
                                   ".every(t => t.dataset.label === 'pos')", timeout=TIMEOUT_MS)
            wrong = [k for k, (i, _) in enumerate(suggested) if not truth[i]]
            for k in wrong:
                page.locator(".cb-tile").nth(k).click()
            labels = dict(tile_state(page))
            assert all(labels[i] == ("pos" if truth[i] else "neg") for i, _ in suggested)
            page.evaluate("() => document.querySelector('.cb-app').scrollIntoView({block: 'start'})")  # clicks scrolled down
            _wait_painted(page)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=False)  # the README's picture
            session.label([i for i, _ in suggested if truth[i]], "pos")
            session.label([i for i, _ in suggested if not truth[i]], "neg")
            expected2 = session.refine()
            assert expected2.estimate["n_pages"] == 1 and expected2.estimate["n_sampled"] == len(suggested)

            # fine-tune again: the answer view is back, with the estimate from the marked page
            t3 = time.perf_counter()
            page.click(".cb-refine")
            _wait_answer(page, expected2)
            timings["refine_after_suggestions_painted_s"] = time.perf_counter() - t3
            assert stats_count(page) == expected2.count and view_state(page) == "answer"
            assert [i for i, _ in tile_state(page)] == expected2.ids[:len(tile_state(page))].tolist()
            est = _check_estimate(page, expected2)
            assert expected2.estimate["method"] in est["text"]  # from the marked page, not cross-validation only
            timings["estimate_after_suggestions"] = {k: est[k] for k in ("precision", "recall")}
            timings["refine2_model"] = expected2.model_name
            timings.update({f"refine2_{k}_s": v for k, v in app_timings(page).items()})

            # the Show toggle: a new answer has no suggestions yet, so "suggestions to mark" draws the
            # next page (for the new answer); back to the answer, and again the same page (no new draw)
            expected_page2 = session.suggest(60)
            toggle = page.locator(".cb-view button", has_text="suggestions to mark")
            for _ in range(2):
                toggle.click()
                page.wait_for_function(
                    "(ids) => { const t = [...document.querySelectorAll('.cb-tile[data-note]')];"
                    " return t.length === ids.length && t.every((e, k) => Number(e.dataset.id) === ids[k]); }",
                    arg=expected_page2.ids.tolist(), timeout=TIMEOUT_MS)
                _wait_painted(page)
                assert stats_view(page) == "suggestions" and view_state(page) == "suggestions to mark"
                assert {lab for _, lab in tile_state(page)} == {"none"}
                page.locator(".cb-view button", has_text="answer").click()
                _wait_answer(page, expected2)
                assert view_state(page) == "answer"

            # switch the model to the ensemble and fine-tune again
            page.select_option(".cb-model select", label="Branch ensemble")
            old = stats_count(page)
            page.click(".cb-refine")
            page.wait_for_function("() => !document.querySelector('.cb-refine').disabled"
                                   " && document.querySelector('.cb-stats') !== null", timeout=TIMEOUT_MS)
            # "as selected": this round's statistics, not the previous round's (auto may have chosen the ensemble too)
            page.wait_for_function("() => { const c = document.querySelector('.cb-model-choice');"
                                   " return c && c.dataset.model === 'ensemble' && c.textContent.includes('as selected'); }",
                                   timeout=TIMEOUT_MS)
            assert stats_count(page) is not None and stats_count(page) > 0
            timings["ensemble_count"], timings["auto_count"] = stats_count(page), old

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

            # a reload (a new kernel) gets the marks back, and the last fine-tuned answer
            n_pos, n_neg = len(session.positives), len(session.negatives)
            t4 = time.perf_counter()
            page.reload(timeout=TIMEOUT_MS)
            page.wait_for_function(
                "([p, n]) => { const m = document.querySelector('.cb-marks');"
                " return m && m.dataset.pos === String(p) && m.dataset.neg === String(n); }",
                arg=[n_pos, n_neg], timeout=TIMEOUT_MS)
            # restored: the query's 60 results first, then the answer's first page (15 tiles) under it
            page.wait_for_function(
                "() => { const s = [...document.querySelectorAll('.cb-stats[data-count]')].pop();"
                " if (!s || s.dataset.view !== 'answer' || !s.querySelector(\".cb-model-choice[data-model='ensemble']\"))"
                " return false; const t = document.querySelectorAll('.cb-tile');"
                " return t.length === Math.min(15, Number(s.dataset.count)); }", timeout=TIMEOUT_MS)
            _wait_painted(page)
            timings["reload_to_restored_s"] = time.perf_counter() - t4
            assert stats_count(page) == timings["ensemble_count"]  # the same marks and seed: the same answer
            assert view_state(page) == "answer"

            # "more like this" on a tile (its ≈ button, shown on hover): that item's neighbours
            item = tile_state(page)[2][0]
            expected_similar, _ = catalog.search_image(item, k=60)
            page.locator(".cb-tile").nth(2).hover()
            page.locator(".cb-tile").nth(2).locator(".cb-similar").click()
            _wait_tiles(page, 60, int(expected_similar[0]), count=60)
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
    assert np.isfinite([v for v in timings.values() if isinstance(v, float)]).all()
