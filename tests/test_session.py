"""SearchSession: queries, persistent marks, undo, refine over the whole catalog, save/load, export."""

import csv
import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from clipbranches_widgets.catalog import write_catalog
from clipbranches_widgets.demo import concept_mask
from clipbranches_widgets.session import AUTO_FAMILIES, AUTO_MARGIN, MODELS, RefineResult, SearchSession


def _concept_ids(catalog, concept, n):
    """The first ``n`` true members of a concept (ground truth, independent of search quality)."""
    ids = np.flatnonzero(concept_mask(catalog.items, concept))
    assert ids.size >= n, f"the tiny catalog has only {ids.size} items for {concept!r}"
    return [int(i) for i in ids[:n]]


@pytest.fixture
def marked(tiny_catalog):
    """A session after a text query, with 12 red stars positive and 5 blue rings negative."""
    session = SearchSession(tiny_catalog, random_state=0)
    session.text_search("a red star")
    session.label(_concept_ids(tiny_catalog, "a red star", 12), "pos")
    session.label(_concept_ids(tiny_catalog, "a blue ring", 5), "neg")
    return session


@pytest.mark.parametrize("module", ["session", "catalog", "build", "embedding", "engine"])
def test_import_does_not_load_torch_or_widgets(module):
    code = (f"import sys, clipbranches_widgets.{module}; "
            "print(sorted(m for m in ('torch', 'ipywidgets', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_searches_return_k_items_and_record_the_query(tiny_catalog):
    session = SearchSession(tiny_catalog)
    assert session.query is None and session.last_result is None
    hits = session.text_search("  a red star ", k=25)
    assert len(hits) == 25 and hits.ids.dtype == np.int64 and len(set(hits.ids.tolist())) == 25
    assert np.all(np.diff(hits.scores) <= 1e-6)  # best first
    assert session.query == hits.query == {"type": "text", "text": "a red star"}
    assert set(hits.timings) == {"encode", "nn"}
    hits = session.image_search(7, k=10)
    assert len(hits) == 10 and hits.ids.tolist() == tiny_catalog.search_image(7, k=10)[0].tolist()
    assert session.query == {"type": "image", "item_id": 7}
    hits = session.image_search(tiny_catalog.image(7), k=5)  # a picture, encoded like the catalog's
    assert len(hits) == 5 and session.query == {"type": "image", "item_id": None}
    assert len(session.text_search("a blue ring")) == 60  # default k, as the original


def test_labels_persist_across_searches_and_undo(tiny_catalog):
    session = SearchSession(tiny_catalog)
    hits = session.text_search("a red star", k=10)
    session.label(hits.ids[:4], "pos")
    session.label(int(hits.ids[4]), "neg")
    session.image_search(3)
    session.text_search("a green circle")
    expected = {int(i): "pos" for i in hits.ids[:4]} | {int(hits.ids[4]): "neg"}
    assert session.labels == expected
    assert session.positives == sorted(int(i) for i in hits.ids[:4])
    assert session.negatives == [int(hits.ids[4])]

    session.label([int(hits.ids[0]), int(hits.ids[4]), 2999], "neg")  # one action over three ids
    assert session.labels[int(hits.ids[0])] == "neg" and session.labels[2999] == "neg"
    session.label(hits.ids[:2], "none")
    assert int(hits.ids[0]) not in session.labels and int(hits.ids[1]) not in session.labels
    session.undo()  # back before "none"
    assert session.labels[int(hits.ids[0])] == "neg" and session.labels[int(hits.ids[1])] == "pos"
    session.undo()  # back before the three-id "neg"
    assert session.labels == expected
    session.label([], "pos")  # changes nothing: not an action
    session.label(int(hits.ids[0]), "pos")  # already positive: not an action either
    session.undo()
    session.undo()
    assert session.labels == {}
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


@pytest.mark.parametrize("model", MODELS)
def test_refine_returns_every_catalog_positive(marked, model):
    catalog = marked.catalog
    result = marked.refine(model, random_state=1)
    assert isinstance(result, RefineResult) and result.requested_model == model
    if model == "auto":
        assert result.model_name in AUTO_FAMILIES and set(result.selection) == {*AUTO_FAMILIES, "reason"}
        assert result.selection["reason"].startswith(result.model_name)
        # the chosen family is the first one whose estimated F1 is within AUTO_MARGIN of the best
        best = max(result.selection[f]["f1"] for f in AUTO_FAMILIES)
        assert result.model_name == next(f for f in AUTO_FAMILIES if result.selection[f]["f1"] >= best - AUTO_MARGIN)
        model = result.model_name
    else:
        assert result.model_name == model and result.selection["reason"] == f"{model} was asked for"
    codes = np.asarray(catalog.codes)
    if model in ("branches", "ensemble"):
        expected = np.flatnonzero(result.model.predict_mask(codes))
    elif model == "linear":
        expected = np.flatnonzero(result.model.predict(codes))
    else:
        expected = np.flatnonzero(result.model.predict_proba(codes.astype(np.float32))[:, 1] > 0.5)
    assert np.array_equal(np.sort(result.ids), expected)
    assert result.count == len(result) == expected.size and result.scores.shape == result.ids.shape
    assert np.all(np.diff(result.scores) <= 0)  # ranked best first
    assert set(result.timings) == {"encode", "nn", "sampling", "cv", "train", "apply", "estimate", "total"}
    assert set(result.estimate) >= {"precision", "recall", "f1", "method"}
    assert 0 <= result.estimate["precision"] <= 1 and 0 <= result.estimate["recall"] <= 1
    assert all(v >= 0 for v in result.timings.values())
    assert "count" in result.stats and result.stats["count"] == result.count
    assert result.n_positives == 12 and result.n_negatives == 5
    if model == "branches":
        assert result.n_boxes == len(result.rules) == len(result.model.boxes)
        assert result.sql.startswith("SELECT id FROM items")
    elif model == "linear":  # its rule is the weights
        assert result.rules[0].startswith("score = ") and result.sql is None and result.n_boxes is None
    else:
        assert result.rules is None and result.sql is None
        assert (result.n_boxes is None) == (model in ("tree", "forest"))
    round_ = marked.history[-1]
    assert round_["model"] == model and round_["n_pos"] == 12 and round_["n_neg"] == 5
    assert round_["count"] == result.count and round_["query"] == {"type": "text", "text": "a red star"}
    assert set(round_["timings"]) == set(result.timings)


def test_branches_find_the_marked_concept(marked):
    # the 12 marked red stars are inside the boxes (training positives are covered)
    result = marked.refine("branches", random_state=0)
    assert set(marked.positives) <= set(result.ids.tolist())


def test_random_negatives_exclude_labels_and_the_query_neighbourhood(marked):
    catalog = marked.catalog
    top = set(catalog.search_text("a red star", k=1500)[0].tolist())  # default: half of this 3,000-item catalog
    result = marked.refine("branches", n_random_negatives=500, random_state=3)
    used = set(result.negative_ids.tolist())
    assert result.n_random_negatives == len(used) == 500
    assert not used & set(marked.labels) and not used & top
    assert result.n_excluded_neighbours == 1500
    assert "top-1500" in result.negatives_source and marked.history[-1]["n_random_negatives"] == 500

    # only rows outside the neighbourhood and the labels are eligible: all of them are used, no more
    result = marked.refine("branches", n_random_negatives=3000, random_state=3)
    assert result.n_random_negatives == 3000 - len(top | set(marked.labels))
    assert not set(result.negative_ids.tolist()) & (top | set(marked.labels))

    result = marked.refine("branches", exclude_top=0, random_state=3)
    assert result.n_excluded_neighbours == 0 and "top-" not in result.negatives_source
    assert not set(result.negative_ids.tolist()) & set(marked.labels)


def test_without_a_query_only_labels_are_excluded(tiny_catalog):
    session = SearchSession(tiny_catalog, random_state=0)
    session.label(_concept_ids(tiny_catalog, "a red star", 5), "pos")
    result = session.refine("tree", n_random_negatives=2995)
    assert result.n_random_negatives == 2995 and result.n_excluded_neighbours == 0
    assert set(result.negative_ids.tolist()) == set(range(3000)) - set(session.positives)
    assert session.history[-1]["query"] is None


def test_user_negatives_alone_and_their_weight(marked):
    result = marked.refine("branches", n_random_negatives=0, negative_weight=5, random_state=0)
    assert result.n_random_negatives == 0 and result.negative_ids.size == 0
    assert marked.history[-1]["negative_weight"] == 5.0


def test_refine_is_deterministic(marked, tiny_catalog):
    a = marked.refine("branches", random_state=7)
    b = marked.refine("branches", random_state=7)
    assert np.array_equal(a.negative_ids, b.negative_ids) and np.array_equal(a.ids, b.ids) and a.sql == b.sql
    # a session seed reproduces a sequence of unseeded rounds
    runs = []
    for _ in range(2):
        session = SearchSession(tiny_catalog, random_state=11)
        session.text_search("a red star")
        session.label(marked.positives, "pos")
        runs.append([session.refine("forest") for _ in range(2)])
    for x, y in zip(*runs):
        assert np.array_equal(x.negative_ids, y.negative_ids) and np.array_equal(x.ids, y.ids)
        assert x.random_state == y.random_state
    assert not np.array_equal(runs[0][0].negative_ids, runs[0][1].negative_ids)


def test_save_load_round_trip(marked, tiny_catalog, tmp_path):
    marked.refine("branches", random_state=2)
    path = tmp_path / "session.json"
    marked.save(path)
    saved = json.loads(path.read_text())
    assert saved["catalog"] == {"path": str(tiny_catalog.path),
                                "codes_sha256": tiny_catalog.manifest["files"]["codes.npy"]["sha256"]}
    loaded = SearchSession.load(path, tiny_catalog)
    assert loaded.labels == marked.labels and loaded.query == marked.query
    assert loaded.history == marked.history
    # the kept query embedding and RNG state make the next unseeded round identical
    a, b = marked.refine("branches"), loaded.refine("branches")
    assert np.array_equal(a.negative_ids, b.negative_ids) and np.array_equal(a.ids, b.ids)
    assert a.n_excluded_neighbours == b.n_excluded_neighbours == 1500
    marked.save(path)  # overwriting an existing file works
    assert SearchSession.load(path, tiny_catalog).history == marked.history
    assert [p.name for p in tmp_path.iterdir()] == ["session.json"]  # no temporary file left


def test_answer_again_repeats_the_last_round_without_a_new_round(marked, tiny_catalog):
    assert SearchSession(tiny_catalog).answer_again() is None  # no round yet
    for model in ("ensemble", "auto"):
        first = marked.refine(model, negative_weight=3.0, random_state=5)
        loaded = SearchSession.from_json(marked.to_json(), tiny_catalog)  # rounds are kept, answers are not
        assert loaded.last_result is None
        again = loaded.answer_again()
        assert np.array_equal(again.ids, first.ids) and np.array_equal(again.scores, first.scores)
        assert again.model_name == first.model_name and again.random_state == first.random_state
        assert loaded.history == marked.history and loaded.last_result is again


def test_load_errors(marked, tiny_catalog, tmp_path):
    path = tmp_path / "session.json"
    marked.save(path)
    other = write_catalog(tmp_path / "other", np.full((10, 32), 7, np.uint8), {"caption": ["x"] * 10})
    with pytest.raises(ValueError, match="saved for catalog") as err:
        SearchSession.load(path, other)
    assert str(tiny_catalog.path) in str(err.value) and str(other.path) in str(err.value)
    with pytest.raises(ValueError, match="no session file"):
        SearchSession.load(tmp_path / "missing.json", tiny_catalog)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SearchSession.load(tmp_path / "bad.json", tiny_catalog)
    saved = json.loads(path.read_text())
    del saved["labels"]
    (tmp_path / "partial.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="incomplete or corrupt"):
        SearchSession.load(tmp_path / "partial.json", tiny_catalog)
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a clipbranches session"):
        SearchSession.load(tmp_path / "other.json", tiny_catalog)
    # hand-edited files fail at load with a message, never later with a half-updated session
    first = next(iter(json.loads(path.read_text())["labels"]))
    for field, value, message in [("query", 5, "query must be null or a text/image query"),
                                  ("history", "abc", "history must be a list"),
                                  ("labels", {"0" + first: "pos"}, "malformed item id"),
                                  ("labels", {" " + first: "pos"}, "malformed item id"),
                                  ("labels", ["pos"], "labels must be an object"),
                                  ("query_vector", ["x"] * 32, "query_vector must be a list of numbers")]:
        edited = json.loads(path.read_text())
        edited[field] = value
        (tmp_path / "edited.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=message):
            SearchSession.load(tmp_path / "edited.json", tiny_catalog)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_csv_and_json(marked, tiny_catalog, tmp_path):
    session = SearchSession(tiny_catalog)
    with pytest.raises(ValueError, match="nothing to export"):
        session.export(tmp_path / "x.csv")
    hits = session.text_search("a red star", k=8)
    session.export(tmp_path / "search.csv")
    rows = _read_csv(tmp_path / "search.csv")
    captions = tiny_catalog.items.column("caption").to_pylist()
    has_source = "source" in tiny_catalog.items.column_names
    assert [int(r["id"]) for r in rows] == hits.ids.tolist()
    assert [float(r["score"]) for r in rows] == pytest.approx(hits.scores.tolist())
    assert [r["caption"] for r in rows] == [captions[i] for i in hits.ids]
    assert has_source or all(r["source"] == "" for r in rows)

    result = marked.refine("branches", random_state=0)
    marked.export(tmp_path / "refine.json", format="json")
    data = json.loads((tmp_path / "refine.json").read_text())
    assert [d["id"] for d in data] == result.ids.tolist()
    assert [d["score"] for d in data] == pytest.approx(result.scores.tolist())
    assert data and set(data[0]) == {"id", "source", "caption", "score"}
    assert data[0]["caption"] == captions[data[0]["id"]]
    marked.export(tmp_path / "refine.csv")
    assert len(_read_csv(tmp_path / "refine.csv")) == result.count
    with pytest.raises(ValueError, match="format must be"):
        marked.export(tmp_path / "x.xml", format="xml")


def test_csv_export_does_not_let_captions_run_as_formulas(tmp_path):
    import pyarrow as pa

    from clipbranches_widgets.catalog import write_catalog

    captions = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "plain", "a=b"]
    cat = write_catalog(tmp_path / "c", np.random.default_rng(0).integers(0, 256, (6, 32)).astype(np.uint8),
                        pa.table({"caption": captions}))
    session = SearchSession(cat)
    session.image_search(0, k=6)
    rows = {int(r["id"]): r["caption"] for r in csv.DictReader(io.StringIO(session.export_text("csv")))}
    assert [rows[i] for i in range(6)] == ["'" + c for c in captions[:4]] + ["plain", "a=b"]
    assert {r["caption"] for r in json.loads(session.export_text("json"))} == set(captions)  # JSON keeps them as they are


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_text_queries(tiny_catalog, bad):
    with pytest.raises(ValueError, match="non-empty string"):
        SearchSession(tiny_catalog).text_search(bad)


def test_bad_search_arguments(tiny_catalog):
    session = SearchSession(tiny_catalog)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be an integer"):
            session.text_search("a red star", k=k)
    with pytest.raises(ValueError, match="unknown item id 3000"):
        session.image_search(3000)
    with pytest.raises(ValueError, match="item id or a PIL image"):
        session.image_search("a red star")


def test_bad_labels(tiny_catalog):
    session = SearchSession(tiny_catalog)
    with pytest.raises(ValueError, match=r"unknown item id 3000: this catalog has ids 0..2999"):
        session.label([1, 3000], "pos")
    with pytest.raises(ValueError, match="unknown item id -1"):
        session.label(-1, "pos")
    for bad_id in (1.0, "7", True, None, np.array(5), [[1, 2]], [2.0]):
        with pytest.raises(ValueError, match="item id"):
            session.label(bad_id, "pos")
    for bad_label in ("positive", "", None, 1):
        with pytest.raises(ValueError, match="label must be one of"):
            session.label([1], bad_label)
    assert session.labels == {}  # a rejected call changes nothing
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def test_bad_refine_arguments(tiny_catalog):
    session = SearchSession(tiny_catalog)
    with pytest.raises(ValueError, match="mark at least one positive"):
        session.refine()
    session.label(_concept_ids(tiny_catalog, "a red star", 3), "pos")
    with pytest.raises(ValueError, match="no negatives"):
        session.refine(n_random_negatives=0)
    cases = [({"model": "svm"}, "unknown model"), ({"model": "db"}, "unknown model"),
             ({"n_random_negatives": -1}, "n_random_negatives"), ({"n_random_negatives": 3001}, "n_random_negatives"),
             ({"n_random_negatives": 10.0}, "n_random_negatives"), ({"negative_weight": 0}, "negative_weight"),
             ({"negative_weight": -2}, "negative_weight"), ({"negative_weight": 1e307}, "negative_weight"), ({"negative_weight": float("nan")}, "negative_weight"),
             ({"negative_weight": "5"}, "negative_weight"), ({"exclude_top": -1}, "exclude_top"),
             ({"random_state": "seed"}, "random_state")]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            session.refine(**kwargs)
    assert session.history == []


def test_two_sessions_in_two_threads_on_one_catalog(tiny_catalog):
    concepts = ("a red star", "a blue ring")
    expected = {}
    for concept in concepts:  # run alone first
        session = SearchSession(tiny_catalog, random_state=5)
        session.text_search(concept)
        session.label(_concept_ids(tiny_catalog, concept, 8), "pos")
        expected[concept] = session.refine("branches")

    results, errors = {}, []
    barrier = threading.Barrier(len(concepts))

    def work(concept):
        try:
            session = SearchSession(tiny_catalog, random_state=5)
            barrier.wait()
            session.text_search(concept)
            session.label(_concept_ids(tiny_catalog, concept, 8), "pos")
            results[concept] = (session.refine("branches"), session.labels)
        except Exception as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in concepts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for concept in concepts:
        result, labels = results[concept]
        assert set(labels) == set(_concept_ids(tiny_catalog, concept, 8))
        assert np.array_equal(result.ids, expected[concept].ids)
        assert np.array_equal(result.negative_ids, expected[concept].negative_ids)


def test_text_forms_equal_the_written_files(marked, tmp_path):
    """export_text / to_json (used by the app's download links) are exactly what the files hold."""
    marked.refine("branches", random_state=0)
    marked.export(tmp_path / "r.csv", format="csv")
    marked.export(tmp_path / "r.json", format="json")
    marked.save(tmp_path / "s.json")
    assert marked.export_text("csv") == (tmp_path / "r.csv").read_text()
    assert marked.export_text("json") == (tmp_path / "r.json").read_text()
    assert marked.to_json() == (tmp_path / "s.json").read_text()
    with pytest.raises(ValueError, match="format must be"):
        marked.export_text("xlsx")


# -- suggestions and the estimate ----------------------------------------------------------------

def _mark_by_truth(session, ids, truth):
    session.label([int(i) for i in ids if truth[i]], "pos")
    session.label([int(i) for i in ids if not truth[i]], "neg")


def test_suggest_needs_a_query_or_a_refine(tiny_catalog):
    session = SearchSession(tiny_catalog, random_state=0)
    with pytest.raises(ValueError, match="nothing to suggest from"):
        session.suggest()
    session.text_search("a red star", k=10)
    with pytest.raises(ValueError, match="k must be"):
        session.suggest(0)
    page = session.suggest(20, random_state=1)  # before any refine: all of it explores
    assert len(page) == 20 and len(set(page.ids.tolist())) == 20 and not page.in_answer.any()
    assert page.query["type"] == "suggest" and page.query["of_query"] == {"type": "text", "text": "a red star"}
    assert ((page.scores > 0) & (page.scores <= 1)).all()  # the draw probabilities


def test_suggest_confirms_and_explores_and_never_shows_marked_items(marked, tiny_catalog):
    result = marked.refine("ensemble", random_state=0)
    page = marked.suggest(30, random_state=2)
    assert len(page) == 30 and not set(page.ids.tolist()) & set(marked.labels)
    assert np.array_equal(page.in_answer, np.isin(page.ids, result.ids))
    assert 5 <= page.in_answer.sum() <= 13  # 30% of the page confirms the answer
    assert page.in_answer[: page.in_answer.sum()].all()  # confirming tiles first
    assert page.query["n_in_answer"] == page.in_answer.sum() and page.query["n_explore"] == 30 - page.in_answer.sum()
    assert len(marked.pages) == 1 and np.array_equal(marked.pages[0].ids, page.ids)
    again = marked.suggest(30, random_state=2)  # an unmarked page is not marked: it may come again
    assert np.array_equal(np.sort(again.ids), np.sort(page.ids))


def test_a_marked_page_turns_the_estimate_into_a_sample_estimate_and_survives_save_load(tiny_catalog, tmp_path):
    truth = concept_mask(tiny_catalog.items, "a red star")
    session = SearchSession(tiny_catalog, random_state=0)
    _mark_by_truth(session, session.text_search("a red star", k=30).ids, truth)
    session.label(_concept_ids(tiny_catalog, "a red star", 12), "pos")  # the tiny CLIP finds few itself
    first = session.refine(random_state=1)
    assert first.estimate["method"].startswith("rough") and first.estimate["n_pages"] == 0
    for r in range(2):
        _mark_by_truth(session, session.suggest(40, random_state=10 + r).ids, truth)
    result = session.refine(random_state=3)
    est = result.estimate
    assert est["n_pages"] == 2 and est["n_sampled"] == 80 and "suggestions drawn at random" in est["method"]
    assert est["positives"] > 0 and est["n_unmarked_suggestions"] == 0
    pred = np.zeros(len(truth), bool)
    pred[result.ids] = True
    true_p, true_r = (pred & truth).sum() / max(pred.sum(), 1), (pred & truth).sum() / truth.sum()
    assert abs(est["precision"] - true_p) <= 0.25 and abs(est["recall"] - true_r) <= 0.25
    assert session.history[-1]["estimate"] == {k: est[k] for k in ("precision", "recall", "f1")}

    path = tmp_path / "s.json"
    session.save(path)
    loaded = SearchSession.load(path, tiny_catalog)
    assert [p.ids.tolist() for p in loaded.pages] == [p.ids.tolist() for p in session.pages]
    again = loaded.refine(random_state=3)
    assert again.estimate == est and np.array_equal(again.ids, result.ids)

    saved = json.loads(path.read_text())  # a version-1 file (before pages) still loads
    saved["version"] = 1
    del saved["pages"]
    path.write_text(json.dumps(saved))
    assert SearchSession.load(path, tiny_catalog).pages == []
    saved["version"] = 2
    saved["pages"] = [{"ids": [10**9], "pi": [0.5]}]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="outside the catalog|unknown|id"):
        SearchSession.load(path, tiny_catalog)


def test_auto_takes_the_linear_model_below_few_positives(tiny_catalog):
    from clipbranches_widgets.engine.selection import FEW_POSITIVES

    session = SearchSession(tiny_catalog, random_state=0)
    session.text_search("a red star", k=10)
    session.label(_concept_ids(tiny_catalog, "a red star", FEW_POSITIVES - 1), "pos")
    result = session.refine(random_state=0)
    assert result.model_name == "linear" and f"fewer than {FEW_POSITIVES} positives" in result.selection["reason"]
    assert set(result.selection) == {*AUTO_FAMILIES, "reason"}  # both still estimated, for the record


def test_refine_defaults_scale_to_a_small_catalog(tmp_path):
    import pyarrow as pa

    from clipbranches_widgets.catalog import write_catalog
    from clipbranches_widgets.testing.synthetic import clustered_catalog

    codes, labels = clustered_catalog(48, n_clusters=3, seed=1)
    cat = write_catalog(tmp_path / "small", codes, pa.table({"caption": [f"c{c}" for c in labels]}))
    session = SearchSession(cat, random_state=0)
    shown = session.image_search(int(np.flatnonzero(labels == 0)[0]), k=10).ids
    session.label([int(i) for i in shown if labels[i] == 0], "pos")
    result = session.refine()  # defaults: 24 random negatives, the query's top 24 barred
    assert result.n_random_negatives == 24
    assert result.n_excluded_neighbours == 24 and result.count >= 1
    with pytest.raises(ValueError, match=r"n_random_negatives must be an integer in 0\.\.48"):
        session.refine(n_random_negatives=500)


def test_warm_up_runs_the_first_click_paths_and_reports_problems_in_words(tiny_catalog, tmp_path):
    import pyarrow as pa

    from clipbranches_widgets.catalog import write_catalog

    assert SearchSession.warm_up(tiny_catalog, k=30) == []
    assert tiny_catalog._index is None  # Fine-tune scans: no box index is built unless asked for
    codes = np.random.default_rng(0).integers(0, 256, (400, 32)).astype(np.uint8)
    no_encoder = write_catalog(tmp_path / "c", codes, pa.table({"caption": ["x"] * 400}))
    problems = SearchSession.warm_up(no_encoder, k=30)
    assert len(problems) == 1 and problems[0].startswith("query encoder:")  # the engine part still ran
