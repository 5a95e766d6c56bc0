"""SearchApp: the whole search UI driven from Python (widget values + button.click()).

The tiny catalog's CLIP is barely trained, so these tests check the plumbing (what reaches the
session, what the widgets show), never search quality. The browser test lives elsewhere.
"""

import base64
import csv
import datetime
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipbranches_widgets.demo import concept_mask
from clipbranches_widgets.session import AUTO_FAMILIES, MODELS as SESSION_MODELS
from clipbranches_widgets.widgets import ImageGrid, SearchApp, default_app
from clipbranches_widgets.widgets.app import BUILD_HINT, NOTE_EXPLORE, NOTE_IN_ANSWER

_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
REPO = Path(__file__).resolve().parent.parent
MODELS = ["auto", "branches", "ensemble", "linear", "tree", "forest"]


def _ids(catalog, concept, n):
    ids = np.flatnonzero(concept_mask(catalog.items, concept))
    assert ids.size >= n
    return [int(i) for i in ids[:n]]


def _count(app):
    match = re.search(r'<div class="cb-stats" data-count="(\d+)"', app.stats.value)
    assert match, app.stats.value
    return int(match.group(1))


def _stats_attr(app, name):
    match = re.search(rf'<div class="cb-stats"[^>]* {name}="([^"]*)"', app.stats.value)
    assert match, app.stats.value
    return match.group(1)


def _estimate(app):
    """(precision, recall, f1) from the cb-estimate element, or None when there is none."""
    match = re.search(r'<div class="cb-estimate" data-precision="([^"]+)" data-recall="([^"]+)" '
                      r'data-f1="([^"]+)">', app.stats.value)
    return None if match is None else tuple(float(v) for v in match.groups())


def _error(app):
    match = re.search(r'<div class="cb-error">(.*?)</div>', app.error.value, re.S)
    return match.group(1) if match else None


def _download(app):
    match = re.search(r'href="data:([^;]+);charset=utf-8;base64,([^"]+)"', app.download.value)
    assert match, app.download.value
    return match.group(1), base64.b64decode(match.group(2)).decode("utf-8")


@pytest.fixture
def app(tiny_catalog):
    return SearchApp(tiny_catalog, warm_up=False, random_state=0)


@pytest.fixture
def searched(app):
    """An app after a text search, with 12 red stars positive and 5 blue rings negative."""
    app.query.value = "a red star"
    app.search_button.click()
    app.grid.set_label(_ids(app.catalog, "a red star", 12), "pos")
    app.grid.set_label(_ids(app.catalog, "a blue ring", 5), "neg")
    return app


def test_css_classes_and_defaults(app):
    classes = {"cb-query": app.query, "cb-search": app.search_button, "cb-model": app.model,
               "cb-negatives": app.negatives, "cb-weight": app.weight, "cb-refine": app.refine_button,
               "cb-undo": app.undo_button, "cb-upload": app.upload, "cb-more-like": app.more_like_button,
               "cb-next": app.next_button, "cb-view": app.view, "cb-marks-area": app.marks,
               "cb-catalog": app.catalog_select, "cb-export-csv": app.export_csv_button,
               "cb-export-json": app.export_json_button, "cb-save-session": app.save_button, "cb-app": app}
    for cls, widget in classes.items():
        assert cls in widget._dom_classes, cls
    assert isinstance(app.grid, ImageGrid) and app.grid in app.children
    assert app.model.value == "auto"
    assert [label for label, _ in app.model.options] == [
        "Automatic (best for your marks)", "Decision branches", "Branch ensemble", "Linear (logistic regression)",
        "Decision tree", "Random forest"]
    assert [value for _, value in app.model.options] == list(SESSION_MODELS)  # every model the session has
    assert app.view.value == "answer" and [label for label, _ in app.view.options] == ["answer", "suggestions to mark"]
    assert app.next_button.disabled and app.view.disabled  # nothing to suggest from before a query
    assert (app.negatives.min, app.negatives.max, app.negatives.step, app.negatives.value) == (0, 1000, 100, 500)
    assert (app.weight.min, app.weight.max, app.weight.value) == (1, 100, 1)
    assert app.upload.accept == "image/*"
    assert app.catalog_select.layout.display == "none"  # one catalog: no selector
    assert _count(app) == 0 and _error(app) is None and _stats_attr(app, "data-view") == "answer"
    assert app.warmed_up.is_set()  # warm_up=False


def test_search_shows_k_tiles_and_enter_submits(app):
    app.query.value = "a red star"
    app.search_button.click()
    assert len(app.grid.tiles) == 60 and app.grid.shown == 60
    assert _count(app) == 60
    assert app.grid.tiles[0]["src"].startswith("data:image/")
    assert app.session.query == {"type": "text", "text": "a red star"}
    assert app.session.labels == {}  # a search marks nothing

    small = SearchApp(app.catalog, k=7, warm_up=False)
    small.query.value = "a blue ring"
    small.query._handle_string_msg(None, {"event": "submit"}, [])  # Enter in the browser
    assert len(small.grid.tiles) == 7 and _count(small) == 7


def test_empty_query_shows_error_then_clears(app):
    app.query.value = "   "
    app.search_button.click()
    assert "empty" in _error(app)
    assert app.grid.tiles == []
    app.query.value = "a red star"
    app.search_button.click()
    assert _error(app) is None


def test_grid_labels_reach_session_and_undo(searched):
    app = searched
    session = app.session
    stars, rings = _ids(app.catalog, "a red star", 12), _ids(app.catalog, "a blue ring", 5)
    assert session.positives == sorted(stars) and session.negatives == sorted(rings)
    assert '<span class="cb-marks" data-pos="12" data-neg="5">marked: 12 positive, 5 negative' in app.marks.value
    app.grid.label_all("none")  # the "All none" button on the shown tiles
    cleared = [i for i in app.grid.shown_ids if i in stars or i in rings]
    assert all(session.labels.get(i) is None for i in cleared)
    app.undo_button.click()
    assert session.positives == sorted(stars) and session.negatives == sorted(rings)
    assert {int(k): v for k, v in app.grid.labels.items()} == session.labels
    app.undo_button.click()  # undo the negatives
    assert session.negatives == [] and all(app.grid.label_of(i) == "none" for i in rings)
    assert 'data-pos="12" data-neg="0"' in app.marks.value
    app.undo_button.click()
    app.undo_button.click()  # nothing left
    assert "nothing to undo" in _error(app)
    app.grid.set_label(stars[0], "pos")
    assert _error(app) is None


@pytest.mark.parametrize("model", MODELS)
def test_refine_each_model(searched, model):
    app = searched
    app.model.value = model
    app.refine_button.click()
    assert _error(app) is None, _error(app)
    result = app.last_result
    assert result.requested_model == model
    if model == "auto":
        assert result.model_name in AUTO_FAMILIES
        assert "chosen automatically" in app.stats.value
    else:
        assert result.model_name == model and "as selected" in app.stats.value
    assert app.session.history[-1]["model"] == result.model_name
    # which model answered, and why
    assert f'<div class="cb-model-choice" data-model="{result.model_name}">' in app.stats.value
    assert html.escape(result.selection["reason"]) in app.stats.value
    # the estimate comes with every answer, labelled as one
    precision, recall, f1 = _estimate(app)
    assert 0 <= precision <= 1 and 0 <= recall <= 1 and 0 <= f1 <= 1
    assert (precision, recall) == (round(result.estimate["precision"], 4), round(result.estimate["recall"], 4))
    assert "Estimated precision" in app.stats.value and html.escape(result.estimate["method"]) in app.stats.value
    assert _count(app) == result.count
    assert [t["id"] for t in app.grid.tiles] == [int(i) for i in result.ids]
    assert app.grid.shown == min(app.grid.page_size, result.count)
    if result.count > app.grid.page_size:
        app.grid.load_more()
        assert app.grid.shown == min(2 * app.grid.page_size, result.count)
    # the marks are kept and badged as labelled before this round
    assert {int(k): v for k, v in app.grid.labels.items()} == app.session.labels
    assert sorted(app.grid.labelled_before) == sorted(app.session.labels)
    assert not app.refine_button.disabled and app.refine_button.description == "Fine-tune"
    assert app.busy.value == ""
    for part in ("encode", "nn", "sampling", "cv", "train", "apply", "estimate"):
        assert part in app.stats.value
    assert "random negatives: " in app.stats.value and _stats_attr(app, "data-view") == "answer"
    if result.model_name == "branches":
        assert "SELECT" in app.sql.value and "box 1:" in app.rules.value
    elif result.model_name == "linear":
        assert "score =" in app.rules.value and "n/a" in app.sql.value
    else:
        assert "n/a" in app.sql.value and "n/a" in app.rules.value


def test_slider_extremes(searched):
    app = searched
    app.negatives.value = 0
    app.weight.value = 100
    app.refine_button.click()
    assert _error(app) is None, _error(app)
    assert app.last_result.n_random_negatives == 0
    assert app.session.history[-1]["negative_weight"] == 100.0
    app.negatives.value = 1000
    app.refine_button.click()
    assert _error(app) is None and app.last_result.n_random_negatives > 0


def test_refine_errors_are_shown(app):
    app.query.value = "a red star"
    app.search_button.click()
    app.refine_button.click()
    assert "positive" in _error(app)
    assert not app.refine_button.disabled
    app.grid.set_label(app.grid.tiles[0]["id"], "pos")
    app.negatives.value = 0
    app.refine_button.click()
    assert "no negatives" in _error(app)
    app.negatives.value = 100
    app.refine_button.click()
    assert _error(app) is None


def test_unexpected_exception_is_shown_not_raised(searched, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(searched.session, "refine", boom)
    searched.refine_button.click()
    assert "kaboom" in _error(searched) and "Traceback" not in searched.error.value
    assert not searched.refine_button.disabled
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_more_like_this(app):
    app.more_like_button.click()
    assert "Mark a tile positive" in _error(app)
    app.query.value = "a red star"
    app.search_button.click()
    target = app.grid.tiles[3]["id"]
    app.grid.set_label(target, "pos")
    app.more_like_button.click()
    assert _error(app) is None
    assert app.session.query == {"type": "image", "item_id": target}
    assert app.grid.tiles[0]["id"] == target and _count(app) == 60


def test_upload_searches_by_picture(app):
    jpeg = app.catalog.thumbnail(5)
    app.upload.value = ({"name": "q.jpg", "type": "image/jpeg", "size": len(jpeg), "content": memoryview(jpeg),
                         "last_modified": _EPOCH},)
    assert _error(app) is None, _error(app)
    assert app.session.query == {"type": "image", "item_id": None}
    assert len(app.grid.tiles) == 60
    app.upload.value = ({"name": "bad.jpg", "type": "image/jpeg", "size": 3, "content": memoryview(b"abc"),
                         "last_modified": _EPOCH},)
    assert "not a readable picture" in _error(app)


def test_exports_are_data_links(searched, tmp_path):
    app = searched
    app.export_csv_button.click()
    mime, text = _download(app)
    assert mime == "text/csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in rows] == [t["id"] for t in app.grid.tiles]
    app.refine_button.click()
    app.export_csv_button.click()
    _, text = _download(app)
    app.session.export(tmp_path / "ref.csv")
    assert text == (tmp_path / "ref.csv").read_text()
    assert len(list(csv.DictReader(io.StringIO(text)))) == app.last_result.count
    app.export_json_button.click()
    mime, text = _download(app)
    assert mime == "application/json" and len(json.loads(text)) == app.last_result.count
    app.save_button.click()
    mime, text = _download(app)
    state = json.loads(text)
    assert state["format"] == "clipbranches.session" and len(state["labels"]) == 17
    assert 'download="clipbranches-session.json"' in app.download.value
    assert list(tmp_path.iterdir()) == [tmp_path / "ref.csv"]


def test_export_before_search_is_an_error(app):
    app.export_csv_button.click()
    assert "Nothing to export" in _error(app) and app.download.value == ""


def test_catalog_switching(tiny_catalog, tiny_catalog_path):
    app = SearchApp(catalogs={"first": tiny_catalog, "second": tiny_catalog_path}, warm_up=False)
    assert app.catalog_select.layout.display != "none"
    assert list(app.catalog_select.options) == ["first", "second"]
    first = app.session
    app.query.value = "a red star"
    app.search_button.click()
    app.grid.set_label(app.grid.tiles[0]["id"], "pos")
    app.catalog_select.value = "second"
    assert app.session is not first and app.session.labels == {}
    assert app.catalog is not tiny_catalog and Path(app.catalog.path) == Path(tiny_catalog_path)
    assert app.grid.tiles == [] and app.grid.labels == {} and _count(app) == 0
    assert 'data-pos="0" data-neg="0"' in app.marks.value
    app.query.value = "a blue ring"
    app.search_button.click()
    assert len(app.grid.tiles) == 60 and first.labels  # the old session is untouched


def test_warm_up_finishes(tiny_catalog):
    app = SearchApp(tiny_catalog)
    assert app.warmed_up.wait(300), "warm-up did not finish"
    assert app.warm_up_error is None, app.warm_up_error
    assert 'data-done="1"' in app.warmup_note.value and "warming up" not in app.warmup_note.value
    assert tiny_catalog._query_encoder is not None and tiny_catalog._index is None  # scans: no index built


def test_missing_default_catalog_is_shown(monkeypatch, tmp_path):
    monkeypatch.setenv("CB_CATALOG", str(tmp_path / "nope"))
    for app in (SearchApp.default(), default_app()):
        assert BUILD_HINT in html.unescape(_error(app))
        assert app.session is None and app.search_button.disabled and app.refine_button.disabled
        assert app.warmed_up.is_set()
        app.search_button.click()  # disabled in the browser; from Python it still must not raise
        assert _error(app)


def test_dashboard_notebook_runs(tiny_catalog_path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb_path = REPO / "notebooks" / "dashboard.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook cleared"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code_cells) == 1
    monkeypatch.setenv("CB_CATALOG", str(tiny_catalog_path))
    workdir = tmp_path / "nb"
    workdir.mkdir()
    shutil.copy(nb_path, workdir / "dashboard.ipynb")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()
    outputs = code_cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert not any(o.output_type == "error" for o in outputs)
    state = json.dumps(nb.metadata.get("widgets", {}))
    assert "cb-app" in state and "cb-stats" in state
    assert "No catalog at" not in state and "cb-error\\\">" not in state


def test_default_app_offers_every_catalog_next_to_the_default(monkeypatch, tmp_path, tiny_catalog_path):
    """Without CB_CATALOG the selector lists data/demo first, then its sibling catalogs."""
    import shutil

    import clipbranches_widgets.catalog.default as catalog_default

    root = tmp_path / "data"
    root.mkdir()
    for name in ("demo", "demo-multi"):
        shutil.copytree(tiny_catalog_path, root / name)
    (root / "not-a-catalog").mkdir()
    monkeypatch.delenv("CB_CATALOG", raising=False)
    monkeypatch.setattr(catalog_default, "DEFAULT_CATALOG", root / "demo")
    app = SearchApp.default(warm_up=False)
    assert app.catalog_select.options == ("demo", "demo-multi")
    assert app.catalog.path == root / "demo"


def test_more_like_this_on_a_tile_searches_by_that_item(searched):
    app = searched
    item = app.grid.shown_ids[4]
    app.grid._on_front_end_message(app.grid, {"type": "similar", "id": item}, [])
    assert app.session.query == {"type": "image", "item_id": item}
    assert len(app.grid.shown_ids) == app.k and "data-count=\"60\"" in app.stats.value
    assert "cb-error" not in app.error.value


def test_label_next_before_any_query_is_an_error(app):
    assert app.next_button.disabled  # in the browser it cannot be pressed; from Python it must not raise
    app.next_button.click()
    assert "search first" in _error(app)
    assert app.grid.tiles == [] and app.view.value == "answer" and app.session.pages == []


def test_label_next_after_a_search_explores(searched):
    app = searched
    assert not app.next_button.disabled and not app.view.disabled
    app.next_button.click()
    assert _error(app) is None, _error(app)
    page = app.suggestions
    assert page is not None and page.query["type"] == "suggest" and len(page) == app.k
    assert [t["id"] for t in app.grid.tiles] == page.ids.tolist() and app.grid.shown == len(page)
    assert not set(page.ids.tolist()) & set(app.session.labels)  # never already-marked items
    assert app.view.value == "suggestions" and _stats_attr(app, "data-view") == "suggestions"
    assert "Showing suggestions to mark" in app.stats.value and "no fine-tuning yet" in app.stats.value
    assert _count(app) == 60  # data-count: still the answer's (the search's) results
    # no answer yet: every suggestion explores
    assert app.grid.notes == {str(i): NOTE_EXPLORE for i in page.ids}
    assert all(t["score"] is None for t in app.grid.tiles)  # draw probabilities are not relevance scores
    assert _estimate(app) is None


def test_label_next_after_refine_then_refine_again(searched):
    """Fine-tune, "Label next", mark the page, fine-tune: the estimate now uses the marked page."""
    app = searched
    app.refine_button.click()
    first = app.last_result
    assert first.estimate["n_pages"] == 0
    app.next_button.click()
    assert _error(app) is None, _error(app)
    page = app.suggestions
    assert app.view.value == "suggestions" and _stats_attr(app, "data-view") == "suggestions"
    assert _count(app) == first.count  # the answer's count, as the data-count contract says
    answer = set(first.ids.tolist())
    for i, in_answer in zip(page.ids.tolist(), page.in_answer.tolist()):
        assert (i in answer) == in_answer
        assert app.grid.note_of(i) == (NOTE_IN_ANSWER if in_answer else NOTE_EXPLORE)
    assert f"{page.query['n_in_answer']} from the answer" in app.stats.value
    assert _estimate(app) is not None  # the answer's estimate stays in view
    # mark the page as the truth says (the tiny CLIP is weak; the truth is exact)
    truth = concept_mask(app.catalog.items, "a red star")
    app.grid.set_label([i for i in page.ids.tolist() if truth[i]], "pos")
    app.grid.set_label([i for i in page.ids.tolist() if not truth[i]], "neg")
    assert all(app.session.labels.get(i) for i in page.ids.tolist())
    pages = len(app.session.pages)
    app.refine_button.click()
    assert _error(app) is None, _error(app)
    second = app.last_result
    assert second is not first and app.suggestions is None
    assert app.view.value == "answer" and _stats_attr(app, "data-view") == "answer"
    assert app.grid.notes == {} and [t["id"] for t in app.grid.tiles][:3] == second.ids[:3].tolist()
    assert second.estimate["n_pages"] == 1 and second.estimate["n_sampled"] == len(page)
    precision, recall, _ = _estimate(app)
    assert 0 <= precision <= 1 and 0 <= recall <= 1
    assert second.estimate["method"] != first.estimate["method"]  # the page, not cross-validation alone
    assert f"(estimate: {second.estimate['method']})" in html.unescape(app.stats.value)
    assert len(app.session.pages) == pages


def test_view_toggle_switches_without_new_pages(searched):
    app = searched
    app.refine_button.click()
    answer_ids = [t["id"] for t in app.grid.tiles]
    app.view.value = "suggestions"  # no page yet: the toggle fetches one, like "Label next"
    assert _error(app) is None and app.suggestions is not None and len(app.session.pages) == 1
    page_ids = [t["id"] for t in app.grid.tiles]
    assert page_ids == app.suggestions.ids.tolist()
    app.grid.set_label(page_ids[0], "neg")
    app.view.value = "answer"
    assert [t["id"] for t in app.grid.tiles] == answer_ids and app.grid.notes == {}
    assert _stats_attr(app, "data-view") == "answer" and _count(app) == app.last_result.count
    app.view.value = "suggestions"  # the same page again, marks kept; no new page drawn
    assert [t["id"] for t in app.grid.tiles] == page_ids and len(app.session.pages) == 1
    assert app.grid.label_of(page_ids[0]) == "neg" and app.grid.notes
    app.next_button.click()  # a fresh page: never the item just marked
    assert len(app.session.pages) == 2 and page_ids[0] not in app.suggestions.ids.tolist()
    app.query.value = "a blue ring"  # a new search: its results, the toggle back on the answer
    app.search_button.click()
    assert app.view.value == "answer" and app.suggestions is None and _stats_attr(app, "data-view") == "answer"


def test_view_toggle_error_is_shown_and_reverted(searched, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("no suggestions today")

    monkeypatch.setattr(searched.session, "suggest", boom)
    shown = [t["id"] for t in searched.grid.tiles]
    searched.view.value = "suggestions"
    assert "no suggestions today" in _error(searched)
    assert searched.view.value == "answer" and [t["id"] for t in searched.grid.tiles] == shown
    searched.next_button.click()
    assert "no suggestions today" in _error(searched) and searched.view.value == "answer"


def test_catalog_switch_resets_suggestions(tiny_catalog, tiny_catalog_path):
    app = SearchApp(catalogs={"first": tiny_catalog, "second": tiny_catalog_path}, warm_up=False)
    app.query.value = "a red star"
    app.search_button.click()
    app.next_button.click()
    assert app.view.value == "suggestions"
    app.catalog_select.value = "second"
    assert app.suggestions is None and app.view.value == "answer" and app.grid.notes == {}
    assert app.next_button.disabled and app.view.disabled


def test_the_app_on_a_sharded_catalog_of_embeddings_without_pictures_or_text_encoder(tmp_path):
    """A clip-retrieval catalog as big collections arrive: no pixels, no text encoder. Search by
    item, mark, fine-tune and Label next work; tiles are caption tiles; text search says why not."""
    from clipbranches_widgets.build.embeddings import build_embedding_catalog, write_embedding_folder

    gen = write_embedding_folder(tmp_path / "emb", 3000, dim=64, rows_per_part=1000, with_text=False, random_state=2)
    cat = build_embedding_catalog(gen.path, tmp_path / "cat", shard_rows=1200, sample_rows=2000, progress=False)
    truth = np.asarray(cat.items_of(np.arange(cat.n_items)).column("cluster"))
    app = SearchApp(cat.path, warm_up=False, random_state=0)
    assert not app.catalog.has_thumbnails and app.catalog.n_shards == 3
    app.query.value = "a red car"
    app.search_button.click()
    assert "--model/--pretrained" in _error(app) and "#123" in _error(app)
    app.query.value = "#5"  # the way in without a text encoder: items like item 5
    app.search_button.click()
    assert app.session.query == {"type": "image", "item_id": 5}
    shown = app.grid.shown_ids
    assert len(shown) == app.k and "cb-error" not in app.error.value
    app.grid.set_label([i for i in shown if truth[i] == truth[5]], "pos")
    app.grid.set_label([i for i in shown if truth[i] != truth[5]], "neg")
    app.refine_button.click()
    result = app.session.last_result
    assert "cb-error" not in app.error.value and result.count > 0
    assert np.mean(truth[result.ids] == truth[5]) > 0.8  # the answer is mostly the marked concept
    app.next_button.click()
    assert "cb-error" not in app.error.value and len(app.grid.shown_ids) == app.k


def test_a_reload_gets_the_marks_the_query_and_the_answer_back(searched, tiny_catalog):
    """The browser keeps the session (ImageGrid.store -> localStorage); a new page's app restores it."""
    app = searched
    kept = []
    app.grid.store = kept.append  # what the front end would put in localStorage
    app.refine_button.click()
    assert kept and app.grid.storage_key.startswith("session:")
    answer = app.last_result.ids.tolist()
    reloaded = SearchApp(tiny_catalog, warm_up=False, random_state=0)  # a new kernel after a reload
    assert reloaded.grid.storage_key == app.grid.storage_key
    message = {"type": "restore", "key": reloaded.grid.storage_key, "state": kept[-1]}
    reloaded.grid._on_front_end_message(reloaded.grid, {**message, "key": "session:other"}, [])
    assert reloaded.session.labels == {}  # another catalog's session is not taken
    reloaded.grid._on_front_end_message(reloaded.grid, message, [])
    assert "cb-error" not in reloaded.error.value
    assert reloaded.session.labels == app.session.labels and reloaded.session.query == app.session.query
    assert reloaded.last_result.ids.tolist() == answer  # the same marks and seed: the same answer
    assert reloaded.session.history == app.session.history  # the answer again, not a new round
    assert all(reloaded.grid.label_of(i) == app.session.labels.get(i, "none") for i in reloaded.grid.shown_ids)
    before = reloaded.session.labels
    reloaded.grid._on_front_end_message(reloaded.grid, message, [])  # a second render: nothing changes
    assert reloaded.session.labels == before
