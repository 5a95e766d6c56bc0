"""ImageGrid: Python-side state, callbacks and validation (no browser; see the browser tests)."""
import base64
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from clipbranches_widgets.widgets import ImageGrid

WIDGET_DIR = pathlib.Path(__file__).resolve().parents[1] / "clipbranches_widgets" / "widgets"
STABLE_CLASSES = ["cb-grid", "cb-tile", "cb-all-pos", "cb-all-neg", "cb-all-none", "cb-more", "cb-note"]
JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


def thumb(i):
    return JPEG + bytes([i % 256])


@pytest.fixture
def grid():
    """A grid showing ids 100..139 (40 tiles) with scores, a page of 15, and a callback log."""
    g = ImageGrid()
    g.calls = []
    g.on_label_change(lambda ids, label: g.calls.append((ids, label)))
    g.show(range(100, 140), scores=np.linspace(1, 0, 40), thumbnail=thumb,
           captions=[f"item {i}" for i in range(100, 140)])
    return g


def test_defaults():
    g = ImageGrid()
    assert (g.page_size, g.columns, g.tile_size, g.disabled) == (15, 5, 128, False)
    assert g.tiles == [] and g.labels == {} and g.shown == 0 and g.labelled_before == []
    assert g.notes == {}


def test_show_fills_tiles(grid):
    assert len(grid.tiles) == 40 and grid.shown == 15
    tile = grid.tiles[3]
    assert tile["id"] == 103 and tile["caption"] == "item 103"
    assert isinstance(tile["score"], float) and tile["score"] == pytest.approx(1 - 3 / 39)
    prefix = "data:image/jpeg;base64,"
    assert tile["src"].startswith(prefix)
    assert base64.b64decode(tile["src"][len(prefix):]) == thumb(103)
    assert grid.shown_ids == list(range(100, 115))


def test_show_defaults_and_shown_argument():
    g = ImageGrid(page_size=4)
    g.show([5, 6, 7, 8, 9, 10], shown=5)
    assert g.shown == 5
    assert g.tiles[0] == {"id": 5, "caption": "", "score": None, "src": ""}
    g.show([1, 2, 3])  # fewer tiles than before: shown resets to the page, capped
    assert g.shown == 3 and len(g.tiles) == 3


def test_show_non_finite_scores_become_none():
    g = ImageGrid()
    g.show([1, 2, 3], scores=[np.nan, np.inf, np.float32(0.5)])
    assert [t["score"] for t in g.tiles] == [None, None, 0.5]
    json.dumps(g.tiles, allow_nan=False)  # what the browser's JSON.parse would accept


def test_show_png_and_missing_thumbnails():
    g = ImageGrid()
    g.show([1, 2], thumbnail=lambda i: b"\x89PNG\r\n" if i == 1 else None)
    assert g.tiles[0]["src"].startswith("data:image/png;base64,")
    assert g.tiles[1]["src"] == ""


def test_max_thumbnails_caps_encoding():
    called = []
    g = ImageGrid(max_thumbnails=3)
    g.show(range(10), thumbnail=lambda i: called.append(i) or JPEG)
    assert called == [0, 1, 2]
    assert [bool(t["src"]) for t in g.tiles] == [True] * 3 + [False] * 7


def test_show_labels_replace_and_notify(grid):
    grid.set_label([100, 101], "pos")
    grid.calls.clear()
    grid.show([101, 102, 103], labels={102: "neg", 103: "none"}, labelled_before=[101])
    assert grid.labels == {"102": "neg"}
    assert grid.labelled_before == [101]
    assert grid.calls == [([102], "neg"), ([100, 101], "none")]
    grid.calls.clear()
    grid.show([7, 8])  # labels=None keeps the labels, labelled_before=None keeps the badges
    assert grid.labels == {"102": "neg"} and grid.labelled_before == [101]
    assert grid.calls == []


def test_set_label(grid):
    grid.set_label([100, 105], "pos")
    grid.set_label(np.int64(106), "neg")
    grid.set_label(999, "neg")  # ids need not be shown or even in the tiles
    assert grid.labels == {"100": "pos", "105": "pos", "106": "neg", "999": "neg"}
    grid.set_label([105, 106], "none")
    assert grid.labels == {"100": "pos", "999": "neg"}
    assert grid.label_of(100) == "pos" and grid.label_of(105) == "none"
    assert grid.calls == [([100, 105], "pos"), ([106], "neg"), ([999], "neg"), ([105, 106], "none")]


def test_set_label_unchanged_does_not_notify(grid):
    grid.set_label([100], "pos")
    grid.calls.clear()
    grid.set_label([100], "pos")
    grid.set_label([120], "none")
    assert grid.calls == []


def test_label_all_acts_on_shown_tiles_only(grid):
    grid.set_label(130, "neg")  # not shown: must survive label_all("none")
    grid.calls.clear()
    grid.label_all("pos")
    assert grid.calls == [(list(range(100, 115)), "pos")]
    grid.set_label(101, "neg")
    grid.calls.clear()
    grid.label_all("none")
    assert grid.labels == {"130": "neg"}
    assert grid.calls == [(list(range(100, 115)), "none")]


def test_load_more(grid):
    grid.load_more()
    assert grid.shown == 30
    grid.load_more()
    assert grid.shown == 40
    grid.load_more()  # everything is shown: stays put
    assert grid.shown == 40
    grid.label_all("neg")
    assert len(grid.labels) == 40


def test_page_size_extremes():
    g = ImageGrid(page_size=1)
    g.show(range(3))
    assert g.shown_ids == [0]
    g.load_more()
    assert g.shown_ids == [0, 1]
    big = ImageGrid(page_size=100)
    big.show(range(7))
    assert big.shown == 7
    big.load_more()
    assert big.shown == 7
    empty = ImageGrid()
    empty.show([])
    assert empty.shown == 0 and empty.shown_ids == []
    empty.load_more()
    empty.label_all("pos")
    assert empty.labels == {}


def test_front_end_edits_fire_callbacks(grid):
    # The front end replaces the whole dict and saves; ipywidgets applies it with set_state.
    grid.set_state({"labels": {"100": "pos", "101": "neg"}})
    assert grid.calls == [([100], "pos"), ([101], "neg")]
    grid.calls.clear()
    grid.labels = {"101": "pos", "102": "pos"}  # a cycle on 101, a click on 102, 100 cleared
    assert grid.calls == [([101, 102], "pos"), ([100], "none")]


def test_front_end_load_more_is_capped(grid):
    grid.set_state({"shown": 999})
    assert grid.shown == 40


def test_removed_callback_is_not_called(grid):
    seen = []

    def callback(ids, label):
        seen.append(label)

    grid.on_label_change(callback)
    grid.set_label(100, "pos")
    grid.on_label_change(callback, remove=True)
    grid.set_label(100, "neg")
    assert seen == ["pos"]


@pytest.mark.parametrize("call, match", [
    (lambda g: g.show([1, 1]), "unique"),
    (lambda g: g.show([1, -2]), "non-negative"),
    (lambda g: g.show([1, 2.5]), "integers"),
    (lambda g: g.show([True]), "integers"),
    (lambda g: g.show("123"), "sequence"),
    (lambda g: g.show([1, 2], scores=[0.5]), "scores has 1"),
    (lambda g: g.show([1, 2], scores=["a", "b"]), "real numbers"),
    (lambda g: g.show([1], captions=["a", "b"]), "captions has 2"),
    (lambda g: g.show([1], thumbnail="x.jpg"), "callable"),
    (lambda g: g.show([1], thumbnail=lambda i: "not bytes"), "bytes"),
    (lambda g: g.show([1], shown=-1), "shown"),
    (lambda g: g.show([1], labels={1: "maybe"}), "label must be"),
    (lambda g: g.show([1], labels=[1]), "mapping"),
    (lambda g: g.show([1], notes={2: "x"}), "not among the tiles"),
    (lambda g: g.show([1], notes={1: 3}), "text"),
    (lambda g: g.show([1], notes=["x"]), "mapping"),
    (lambda g: setattr(g, "notes", {"a": "x"}), "keys"),
    (lambda g: g.set_label([1], "positive"), "label must be"),
    (lambda g: g.set_label("12", "pos"), "integer"),
    (lambda g: g.label_all("yes"), "label must be"),
    (lambda g: g.on_label_change(None), "callable"),
    (lambda g: setattr(g, "labels", {"1": "none"}), "'pos' or 'neg'"),
    (lambda g: setattr(g, "labels", {"x": "pos"}), "keys"),
    (lambda g: setattr(g, "page_size", 0), "page_size"),
    (lambda g: setattr(g, "columns", 0), "columns"),
    (lambda g: setattr(g, "tile_size", 4), "tile_size"),
    (lambda g: setattr(g, "shown", -1), "shown"),
])
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call(ImageGrid())


def test_constructor_validation():
    with pytest.raises(ValueError, match="page_size"):
        ImageGrid(page_size=0)
    with pytest.raises(ValueError, match="max_thumbnails"):
        ImageGrid(max_thumbnails=-1)


def test_failed_show_leaves_state_alone(grid):
    before = (list(grid.tiles), grid.shown, dict(grid.labels))
    with pytest.raises(ValueError):
        grid.show([1, 2], labels={1: "bad"})
    assert (grid.tiles, grid.shown, grid.labels) == before


def test_state_serialises(grid):
    grid.set_label(100, "pos")
    state = grid.get_state()
    for key in ("tiles", "labels", "labelled_before", "notes", "page_size", "shown", "columns",
                "tile_size", "disabled", "_esm", "_css"):
        assert key in state
    assert state["labels"] == {"100": "pos"} and state["shown"] == 15
    json.dumps({k: v for k, v in state.items() if k != "layout"}, allow_nan=False)


def test_front_end_files_hold_the_stable_hooks():
    js = (WIDGET_DIR / "image_grid.js").read_text()
    css = (WIDGET_DIR / "image_grid.css").read_text()
    for cls in STABLE_CLASSES:
        assert cls in js, cls
    for attr in ("data-id", "data-label", "dataset.id", "dataset.label", "tabIndex", "dataset.note",
                 "change:notes"):
        assert attr in js or attr in css, attr
    assert "export default" in js
    # The widget ships the files' contents, not their paths.
    g = ImageGrid()
    assert "cb-grid" in g._esm and ".cb-tile" in g._css


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_esm_parses_with_node(tmp_path):
    # .mjs makes node parse the file as an ES module, whatever package.json is nearby.
    module = tmp_path / "image_grid.mjs"
    shutil.copy(WIDGET_DIR / "image_grid.js", module)
    result = subprocess.run(["node", "--check", str(module)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_more_like_this_requests_from_the_front_end(grid):
    """The ≈ button / "s" key send {"type": "similar", "id": ...}; only shown tiles count."""
    asked = []
    grid.on_similar(asked.append)
    grid.show([7, 3, 9, 11], thumbnail=thumb, shown=2)
    send = lambda content: grid._on_front_end_message(grid, content, [])  # noqa: E731
    send({"type": "similar", "id": 3})
    send({"type": "similar", "id": 9})       # not shown (page of 2): ignored
    send({"type": "similar", "id": "3"})     # not an int: ignored
    send({"type": "similar", "id": True})    # a bool is not an id
    send({"type": "other", "id": 7})
    send(["similar", 7])
    assert asked == [3]
    grid.disabled = True
    send({"type": "similar", "id": 7})
    assert asked == [3]
    grid.disabled = False
    grid.on_similar(asked.append, remove=True)
    send({"type": "similar", "id": 7})
    assert asked == [3]
    with pytest.raises(ValueError, match="callable"):
        grid.on_similar("not a function")
    import clipbranches_widgets.widgets as w

    js = (pathlib.Path(w.__file__).parent / "image_grid.js").read_text()
    assert "cb-similar" in js and 'type: "similar"' in js


def test_notes_per_tile(grid):
    """show(notes=...) writes a note on some tiles; a later show without notes clears them."""
    grid.set_label(101, "pos")
    grid.calls.clear()
    grid.show([101, 102, 103], notes={101: "in answer: right?", np.int64(103): "not in answer: missed?",
                                      102: ""}, shown=3)
    assert grid.notes == {"101": "in answer: right?", "103": "not in answer: missed?"}  # "" is no note
    assert grid.note_of(101) == "in answer: right?" and grid.note_of(102) == "" and grid.note_of(999) == ""
    assert grid.labels == {"101": "pos"} and grid.calls == []  # notes never touch the labels
    state = grid.get_state()
    assert state["notes"] == grid.notes
    json.dumps(state["notes"])
    grid.notes = {**grid.notes, "102": "checked"}  # assign directly: only notes change, not tiles
    assert grid.note_of(102) == "checked" and len(grid.tiles) == 3
    grid.show([101, 102])
    assert grid.notes == {}


def test_failed_show_keeps_the_notes(grid):
    grid.show([1, 2], notes={1: "a"})
    with pytest.raises(ValueError, match="not among"):
        grid.show([5], notes={6: "b"})
    assert grid.notes == {"1": "a"} and [t["id"] for t in grid.tiles] == [1, 2]


def test_thumbnails_are_encoded_one_page_ahead():
    """show() encodes the shown tiles plus one page; each "Load more" encodes one page further."""
    called = []
    g = ImageGrid(page_size=4, max_thumbnails=14)
    g.show(range(20), thumbnail=lambda i: called.append(i) or thumb(i))
    assert called == list(range(8)) and g.shown == 4
    assert [bool(t["src"]) for t in g.tiles] == [True] * 8 + [False] * 12
    g.load_more()  # shows 4..7, already encoded; encodes 8..11 for the next click
    assert called == list(range(12)) and g.shown == 8
    g.set_state({"shown": 12})  # "Load more" from the browser
    assert called == list(range(14))  # never beyond max_thumbnails
    g.set_state({"shown": 20})
    assert called == list(range(14)) and [bool(t["src"]) for t in g.tiles] == [True] * 14 + [False] * 6
    assert g.tiles[9]["src"].endswith(base64.b64encode(thumb(9)).decode()[-8:])
    # a later show starts over with its own callable; a show of all at once encodes them all
    other = []
    g.show([50, 51, 52], thumbnail=lambda i: other.append(i) or JPEG, shown=3)
    assert other == [50, 51, 52] and called == list(range(14))
    g.show([60, 61, 62, 63, 64, 65, 66, 67, 68])  # no thumbnails: nothing is encoded later either
    g.load_more()
    assert other == [50, 51, 52] and all(t["src"] == "" for t in g.tiles)
