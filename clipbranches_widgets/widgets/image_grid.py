"""``ImageGrid``: one anywidget for a whole grid of labellable thumbnails.

A grid of hundreds of ipywidgets (one per tile) is slow to build and sync in Voilà; this widget
sends the whole grid as one model and renders it with a small dependency-free front end
(``image_grid.js``). Users mark tiles positive or negative; the marks live in the ``labels``
traitlet, shared with Python, and ``on_label_change`` callbacks hear about every change,
whether made in the browser or from Python.

The CSS class names and data attributes of the front end are stable, because tests and
browser automation depend on them: the container is ``cb-grid``; each tile is ``cb-tile`` with
``data-id`` (the catalog id) and ``data-label`` (``none``, ``pos`` or ``neg``); a tile with a note
(the ``notes`` trait) also has ``data-note`` (the note's text) and holds ``<span class="cb-note">``;
the buttons are ``cb-all-pos``, ``cb-all-neg``, ``cb-all-none`` and ``cb-more``.
"""
from __future__ import annotations

import base64
import math
import numbers
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import anywidget
import traitlets

_HERE = pathlib.Path(__file__).parent

#: The labels a tile can carry. "none" is never stored: an unlabelled id is absent from ``labels``.
LABELS = ("pos", "neg", "none")


def _check_id(value: object) -> int:
    # bool is an Integral too, but True as a catalog id is almost certainly a bug.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"tile ids must be integers, got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"tile ids must be non-negative, got {value}")
    return int(value)


def _register(callbacks: list, callback, remove: bool) -> None:
    """Add ``callback`` to (or with ``remove``, take it out of) a list of callbacks."""
    if not callable(callback):
        raise ValueError("callback must be callable")
    if remove:
        callbacks.remove(callback)
    else:
        callbacks.append(callback)


def _check_ids(ids: object) -> list[int]:
    """A single id or an iterable of ids, as a list of ints."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"ids must be an integer or an iterable of integers, got {ids!r}")
    if isinstance(ids, numbers.Integral) and not isinstance(ids, bool):
        return [int(ids)]
    if not isinstance(ids, Iterable):
        raise ValueError(f"ids must be an integer or an iterable of integers, got {ids!r}")
    return [_check_id(i) for i in ids]


def _check_label(label: object) -> str:
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    return label


def _score(value: object) -> float | None:
    # Non-finite floats would be written as NaN/Infinity, which the browser's JSON parser rejects.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"scores must be real numbers or None, got {value!r}")
    value = float(value)
    return value if math.isfinite(value) else None


def _data_uri(data: object) -> str:
    """A ``data:`` URI for the JPEG (or PNG) bytes a thumbnail callable returned."""
    if data is None:
        return ""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"thumbnail must return bytes (a JPEG) or None, got {type(data).__name__}")
    data = bytes(data)
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: the most a restore message may carry (localStorage holds about 5 MB per site)
MAX_STORED_CHARS = 4_000_000


class ImageGrid(anywidget.AnyWidget):
    """A grid of thumbnails the user labels positive or negative, paged with "Load more".

    Traitlets (all synced with the front end):

    - ``tiles``: list of ``{"id": int, "src": str, "caption": str, "score": float | None}``;
      ``src`` is a ``data:image/jpeg;base64,...`` URI, or ``""`` for a tile without a thumbnail
      (or whose thumbnail is not encoded yet, see below). Fill it with :meth:`show` rather than
      by hand.
    - ``labels``: ``{str(id): "pos" | "neg"}``; unlabelled ids are absent. Keys are strings
      because the state travels as JSON. It may hold ids that are not in ``tiles`` (labels from
      earlier pages or rounds); the grid shows the labels of the ids it shows.
    - ``labelled_before``: ids labelled in earlier rounds; their tiles get a badge.
    - ``notes``: ``{str(id): text}``, a short note written on a tile (e.g. "in answer: right?");
      ids without a note are absent. Set it with :meth:`show` (which replaces the notes with those
      of the new tiles, or clears them) or assign it; changing it never rebuilds the pictures.
    - ``page_size``: tiles added by "Load more" (at least 1).
    - ``shown``: how many of ``tiles`` are shown, from the start of the list.
    - ``columns``, ``tile_size`` (pixels), ``disabled`` (ignore clicks and keys).

    Thumbnails are sent as base64 inside the widget state, so they are encoded lazily: the tiles
    shown plus one page ahead (``shown + page_size``), and one more page each time ``shown``
    grows ("Load more"), so the next page is ready before it is asked for. Only the first
    ``max_thumbnails`` tiles passed to :meth:`show` ever get one; later tiles show their caption
    in an empty frame. Filling in thumbnails changes only ``src`` values, which the front end
    updates in place.
    """

    _esm = _HERE / "image_grid.js"
    _css = _HERE / "image_grid.css"

    tiles = traitlets.List(traitlets.Dict()).tag(sync=True)
    labels = traitlets.Dict().tag(sync=True)
    labelled_before = traitlets.List(traitlets.Int()).tag(sync=True)
    notes = traitlets.Dict(value_trait=traitlets.Unicode()).tag(sync=True)
    page_size = traitlets.Int(15).tag(sync=True)
    shown = traitlets.Int(0).tag(sync=True)
    columns = traitlets.Int(5).tag(sync=True)
    tile_size = traitlets.Int(128).tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    #: where the front end keeps what :meth:`store` sends (the browser's localStorage, under this key);
    #: "" keeps nothing. When it is set, the front end sends back what it holds under it (on_restore).
    storage_key = traitlets.Unicode("").tag(sync=True)

    def __init__(self, page_size: int = 15, *, columns: int = 5, tile_size: int = 128,
                 max_thumbnails: int = 500, disabled: bool = False, **kwargs) -> None:
        """Create an empty grid; fill it with :meth:`show`.

        ``max_thumbnails`` caps how many tiles per :meth:`show` get an encoded thumbnail.
        """
        if not isinstance(max_thumbnails, numbers.Integral) or max_thumbnails < 0:
            raise ValueError(f"max_thumbnails must be a non-negative integer, got {max_thumbnails!r}")
        self.max_thumbnails = int(max_thumbnails)
        self._thumbnail: Callable[[int], bytes | None] | None = None  # of the current tiles
        self._encoded = 0  # leading tiles whose thumbnail has been asked for
        self._label_callbacks: list[Callable[[list[int], str], object]] = []
        self._similar_callbacks: list[Callable[[int], object]] = []
        self._restore_callbacks: list[Callable[[str], object]] = []
        super().__init__(page_size=page_size, columns=columns, tile_size=tile_size,
                         disabled=disabled, **kwargs)
        self.on_msg(self._on_front_end_message)

    # -- validation: runs for Python assignments and for edits from the front end alike --

    # smallest allowed value of each layout trait (a tile under 16 px shows nothing useful)
    _MINIMA = {"page_size": 1, "columns": 1, "tile_size": 16}

    @traitlets.validate("page_size", "columns", "tile_size")
    def _valid_minimum(self, proposal):
        name, minimum = proposal.trait.name, self._MINIMA[proposal.trait.name]
        if proposal.value < minimum:
            unit = " pixels" if name == "tile_size" else ""
            raise ValueError(f"{name} must be at least {minimum}{unit}, got {proposal.value}")
        return proposal.value

    @traitlets.validate("shown")
    def _valid_shown(self, proposal):
        if proposal.value < 0:
            raise ValueError(f"shown must be non-negative, got {proposal.value}")
        return min(proposal.value, len(self.tiles))

    @traitlets.validate("labels")
    def _valid_labels(self, proposal):
        for key, label in proposal.value.items():
            if not (isinstance(key, str) and key.isdigit()):
                raise ValueError(f"labels keys must be str(id) of non-negative ids, got {key!r}")
            if label not in ("pos", "neg"):
                raise ValueError(f"labels values must be 'pos' or 'neg', got {label!r} for id {key}")
        return proposal.value

    @traitlets.validate("notes")
    def _valid_notes(self, proposal):
        for key in proposal.value:
            if not (isinstance(key, str) and key.isdigit()):
                raise ValueError(f"notes keys must be str(id) of non-negative ids, got {key!r}")
        # an empty note is no note: drop it, so data-note is present exactly when there is text
        return {key: text for key, text in proposal.value.items() if text}

    @traitlets.observe("tiles")
    def _clamp_shown(self, change):
        # Fewer tiles than before: keep ``shown`` within range.
        if self.shown > len(change.new):
            self.shown = len(change.new)

    @traitlets.observe("shown", "page_size")
    def _encode_ahead(self, _change):
        # "Load more" (from the browser or Python): encode the thumbnails of the next page now
        upto = self._encode_limit(self.shown, len(self.tiles))
        if self._thumbnail is None or upto <= self._encoded:
            return
        tiles = list(self.tiles)
        for n in range(self._encoded, upto):
            tiles[n] = {**tiles[n], "src": _data_uri(self._thumbnail(tiles[n]["id"]))}
        self._encoded = upto
        self.tiles = tiles

    def _encode_limit(self, shown: int, n_tiles: int) -> int:
        """How many leading tiles should have their thumbnail: those shown plus one page."""
        return min(n_tiles, shown + self.page_size, self.max_thumbnails)

    @traitlets.observe("labels")
    def _notify_labels(self, change):
        old, new = change.old or {}, change.new or {}
        by_label: dict[str, list[int]] = {}
        for key in sorted(old.keys() | new.keys(), key=int):
            before, after = old.get(key, "none"), new.get(key, "none")
            if before != after:
                by_label.setdefault(after, []).append(int(key))
        for label in LABELS:
            if label in by_label:
                for callback in list(self._label_callbacks):
                    callback(by_label[label], label)

    # -- Python API --

    def show(self, ids: Sequence[int], scores: Sequence[float | None] | None = None, *,
             thumbnail: Callable[[int], bytes | None] | None = None,
             captions: Sequence[str] | None = None,
             labels: Mapping[int, str] | None = None,
             labelled_before: Iterable[int] | None = None,
             shown: int | None = None,
             notes: Mapping[int, str] | None = None) -> None:
        """Replace the tiles with ``ids`` (in display order) and show the first page.

        ``scores`` and ``captions`` run parallel to ``ids``; non-finite scores show as none.
        ``thumbnail(id)`` returns JPEG bytes (or None); it is called for the tiles shown plus
        one page now, for later tiles as they come into view ("Load more"), and never beyond the
        first ``max_thumbnails`` ids. ``labels`` (``{id: "pos" | "neg" | "none"}``), when given,
        replaces all labels, and callbacks hear about the differences; when None the labels
        are kept. ``labelled_before``, when given, replaces the ids that get a badge.
        ``shown`` defaults to ``page_size`` and is capped at ``len(ids)``. ``notes``
        (``{id: text}``, ids among ``ids``) are the new tiles' notes; unlike labels, notes belong
        to one display, so a ``show`` without ``notes`` clears them.
        """
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ValueError(f"ids must be a sequence of integers, got {ids!r}")
        ids = [_check_id(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique: each tile is addressed by its id")
        scores = [None] * len(ids) if scores is None else [_score(s) for s in scores]
        if len(scores) != len(ids):
            raise ValueError(f"scores has {len(scores)} entries for {len(ids)} ids")
        captions = [""] * len(ids) if captions is None else [str(c) for c in captions]
        if len(captions) != len(ids):
            raise ValueError(f"captions has {len(captions)} entries for {len(ids)} ids")
        if thumbnail is not None and not callable(thumbnail):
            raise ValueError("thumbnail must be a callable id -> JPEG bytes")
        if shown is not None and (not isinstance(shown, numbers.Integral) or shown < 0):
            raise ValueError(f"shown must be a non-negative integer, got {shown!r}")
        new_labels = None if labels is None else self._labels_from_mapping(labels)
        before = None if labelled_before is None else _check_ids(labelled_before)
        new_notes = self._notes_from_mapping({} if notes is None else notes, set(ids))

        new_shown = self.page_size if shown is None else int(shown)
        upto = self._encode_limit(new_shown, len(ids)) if thumbnail is not None else 0
        tiles = [
            {"id": i, "caption": c, "score": s, "src": _data_uri(thumbnail(i)) if n < upto else ""}
            for n, (i, s, c) in enumerate(zip(ids, scores, captions))
        ]
        # One sync message for the lot, so the front end never renders a half-updated grid.
        with self.hold_sync():
            self._thumbnail, self._encoded = thumbnail, upto
            self.tiles = tiles
            self.notes = new_notes
            self.shown = new_shown
            if before is not None:
                self.labelled_before = before
            if new_labels is not None:
                self.labels = new_labels

    def set_label(self, ids: int | Iterable[int], label: str) -> None:
        """Set ``label`` ("pos", "neg" or "none") on one id or several; ids need not be shown."""
        ids, label = _check_ids(ids), _check_label(label)
        labels = dict(self.labels)
        for i in ids:
            if label == "none":
                labels.pop(str(i), None)
            else:
                labels[str(i)] = label
        self.labels = labels  # a new dict, so traitlets sees (and syncs) the change

    def label_all(self, label: str) -> None:
        """Set ``label`` ("pos", "neg" or "none") on every tile currently shown."""
        self.set_label(self.shown_ids, _check_label(label))

    def load_more(self) -> None:
        """Show ``page_size`` more tiles (up to all of them), as the "Load more" button does."""
        self.shown = min(self.shown + self.page_size, len(self.tiles))

    def on_label_change(self, callback: Callable[[list[int], str], object],
                        remove: bool = False) -> None:
        """Call ``callback(ids, label)`` whenever labels change, from the browser or Python.

        ``ids`` is the sorted list of ids whose label became ``label`` ("pos", "neg" or
        "none"); one change that moves ids to different labels makes one call per label.
        ``remove=True`` unregisters the callback.
        """
        _register(self._label_callbacks, callback, remove)

    def on_similar(self, callback: Callable[[int], object], remove: bool = False) -> None:
        """Call ``callback(id)`` when the user asks for "more like this" on a tile (its ≈ button,
        or the "s" key on a focused tile). ``remove=True`` unregisters the callback."""
        _register(self._similar_callbacks, callback, remove)

    def store(self, text: str) -> None:
        """Keep ``text`` in the browser under :attr:`storage_key` (it survives a reload of the page)."""
        if self.storage_key:
            self.send({"type": "store", "key": self.storage_key, "state": str(text)})

    def on_restore(self, callback: Callable[[str], object], remove: bool = False) -> None:
        """Call ``callback(text)`` with what the browser kept under :attr:`storage_key` (sent when the
        page renders the grid, or when the key changes). ``remove=True`` unregisters the callback."""
        _register(self._restore_callbacks, callback, remove)

    def _on_front_end_message(self, _widget, content, _buffers) -> None:
        # Only requests about tiles that are on screen count; anything else is ignored, since a
        # front end (or a stale page) can send any JSON.
        if isinstance(content, dict) and content.get("type") == "restore":
            state = content.get("state")
            if content.get("key") == self.storage_key and isinstance(state, str) and len(state) <= MAX_STORED_CHARS:
                for callback in list(self._restore_callbacks):
                    callback(state)
            return
        if not isinstance(content, dict) or content.get("type") != "similar" or self.disabled:
            return
        item = content.get("id")
        if isinstance(item, bool) or not isinstance(item, int) or item not in self.shown_ids:
            return
        for callback in list(self._similar_callbacks):
            callback(item)

    @property
    def shown_ids(self) -> list[int]:
        """Ids of the tiles currently shown, in display order."""
        return [t["id"] for t in self.tiles[: self.shown]]

    def label_of(self, id: int) -> str:
        """The label of one id: "pos", "neg" or "none"."""
        return self.labels.get(str(_check_id(id)), "none")

    def note_of(self, id: int) -> str:
        """The note on one id ("" when it has none)."""
        return self.notes.get(str(_check_id(id)), "")

    @staticmethod
    def _notes_from_mapping(notes: Mapping[int, str], ids: set[int]) -> dict[str, str]:
        if not isinstance(notes, Mapping):
            raise ValueError(f"notes must be a mapping id -> text, got {type(notes).__name__}")
        out = {}
        for i, text in notes.items():
            i = _check_id(i)
            if i not in ids:
                raise ValueError(f"notes has a note for id {i}, which is not among the tiles shown")
            if not isinstance(text, str):
                raise ValueError(f"notes values must be text, got {text!r} for id {i}")
            if text:
                out[str(i)] = text
        return out

    @staticmethod
    def _labels_from_mapping(labels: Mapping[int, str]) -> dict[str, str]:
        if not isinstance(labels, Mapping):
            raise ValueError(f"labels must be a mapping id -> label, got {type(labels).__name__}")
        return {str(_check_id(i)): lab for i, lab in labels.items() if _check_label(lab) != "none"}
