"""``SearchApp``: the whole search UI in one ipywidgets box (JupyterLab and Voilà).

Layout (after the original web app, reference section 5):

- a top bar: title, catalog selector (only when several catalogs are given), "warming up…" note;
- a query row: text box (Enter submits) and Search, "Search by image" upload (any picture),
  and "More like this", which searches by the item most recently marked positive in the grid;
  each tile also has its own "more like this" (its ≈ button on hover, or the "s" key);
- an options row: model selector ("Automatic (best for your marks)" by default: the session's
  ``refine("auto")`` fits several families and keeps the best estimated F1), random negatives slider,
  negative weight slider, Fine-tune;
- an error line; a "Show: answer | suggestions to mark" toggle (what the grid holds: the last
  search's results or refine's answer, or the last page of suggestions), "Label next" (a fresh
  page of suggestions to mark, from :meth:`SearchSession.suggest`), Undo (reverts the last
  marking action) and how many items are marked; a statistics panel (which
  of the two is shown, the model chosen and why, and the answer's estimated precision and
  recall), the :class:`ImageGrid` (with its own All ✓ / All ✗ / All none / Load more buttons;
  suggested tiles carry a note: "in answer: right?" or "not in answer: missed?");
- an accordion with the model as rules (Decision branches: its boxes; Linear: its weights) and as
  SQL (Decision branches only);
- export buttons (results CSV / JSON, session JSON) that render a download link with a
  ``data:`` URI, so they work in Voilà without a file system the user can reach.

Stable CSS classes (for styling and browser tests): ``cb-app``, ``cb-query``, ``cb-search``,
``cb-upload``, ``cb-more-like``, ``cb-model``, ``cb-negatives``, ``cb-weight``, ``cb-refine``,
``cb-next`` ("Label next"), ``cb-undo``, ``cb-view`` (the Show toggle), ``cb-catalog``,
``cb-export-csv``, ``cb-export-json``, ``cb-save-session``; the error line holds
``<div class="cb-error">message</div>`` when there is an error, the statistics
``<div class="cb-stats" data-count="N" data-view="answer|suggestions">`` (N: results of the last
search, or all positives of the last refine round, whichever view is shown; data-view: what the
grid shows), inside it after a refine ``<div class="cb-model-choice" data-model="NAME">`` (the
family used and why) and ``<div class="cb-estimate" data-precision="P" data-recall="R"
data-f1="F">`` (the answer's estimated quality, numbers in [0, 1], and how it was estimated), the
download area ``<a class="cb-download" ...>``, the warm-up note ``<span class="cb-warmup"
data-done="0|1">``, the marks counter ``<span class="cb-marks" data-pos="N" data-neg="M">``
(next to Undo, updated on every mark). The grid's own classes (tiles, their ``data-note``) are documented in
:mod:`clipbranches_widgets.widgets.image_grid`.

The default catalog is ``$CB_CATALOG`` when that environment variable is set, else
:data:`clipbranches_widgets.catalog.DEFAULT_CATALOG` (``data/demo`` in a checkout).
"""
from __future__ import annotations

import html
import io
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from ..catalog.base import CatalogBase
from ..catalog.default import default_catalog_path
from ..pictures import MAX_UPLOAD_BYTES, open_picture
from .formatting import (MODEL_OPTIONS, NOTE_EXPLORE, NOTE_IN_ANSWER, VIEW_OPTIONS, data_link, model_label,
                         refine_stats_html, search_stats_html, stats_html, suggestions_stats_html)
from .image_grid import ImageGrid

__all__ = ["SearchApp", "default_app", "default_catalog_path", "MODEL_OPTIONS", "VIEW_OPTIONS"]

log = logging.getLogger(__name__)


BUILD_HINT = "python -m clipbranches_widgets build-catalog data/demo"

_STYLE = "<style>" + (Path(__file__).with_name("app.css")).read_text() + "</style>"


def default_app(**kwargs) -> "SearchApp":
    """A :class:`SearchApp` on the default catalog (see :func:`default_catalog_path`).

    A missing or broken catalog does not raise: the app shows the error and how to build it.
    """
    return SearchApp.default(**kwargs)


class SearchApp(widgets.VBox):
    """Text / picture search, marking, and decision-branch refine rounds in one widget.

    Parameters
    ----------
    catalog_or_path : Catalog, path or None
        The catalog to search; None opens the default catalog (:func:`default_catalog_path`).
        Ignored when ``catalogs`` is given.
    catalogs : dict name -> Catalog or path, optional
        Several catalogs; a dropdown switches between them (each switch starts a new session).
        The first one opens first.
    page_size : int
        Tiles added per "Load more" after a refine round.
    k : int
        Items shown by a text or picture search (all at once), and by "Label next".
    random_state : int or None
        Seed of each new :class:`~clipbranches_widgets.session.SearchSession`.
    warm_up : bool
        Warm up in a background thread on open (query encoder, box index, Numba kernels).

    Attributes: ``session`` (the current SearchSession, None without a catalog), ``catalog``,
    ``grid`` (ImageGrid), ``warmed_up`` (threading.Event set when the current catalog's warm-up
    finished, successfully or not), ``last_result`` (the answer: the last search's or refine's
    result), ``suggestions`` (the last page from "Label next" for that answer, or None), and the
    controls (``query``, ``search_button``, ``upload``, ``more_like_button``, ``model``,
    ``negatives``, ``weight``, ``refine_button``, ``next_button``, ``undo_button``, ``view``,
    ``catalog_select``, ``error``, ``stats``, ``rules``, ``sql``, ``download``, ...). The app never raises from a button: errors are shown in
    ``error``; unexpected ones are also logged.
    """

    def __init__(self, catalog_or_path=None, *, catalogs=None, page_size: int = 15, k: int = 60,
                 random_state=0, warm_up: bool = True, max_thumbnails: int = 500, **kwargs):
        super().__init__(**kwargs)
        self.add_class("cb-app")
        self.k = int(k)
        self.random_state = random_state
        self._warm_up_enabled = bool(warm_up)
        self._syncing = False  # True while the app itself rewrites grid labels
        self._setting_view = False  # True while the app itself moves the Show toggle
        self._busy = False
        self._last_positive: int | None = None
        self._opened: dict[str, object] = {}  # catalog name -> opened Catalog
        self.session = None
        self.catalog = None
        self.last_result = None
        self.suggestions = None
        self.warmed_up = threading.Event()
        self.warm_up_error: str | None = None

        if catalogs:
            if not isinstance(catalogs, dict):
                raise TypeError("catalogs must be a dict name -> Catalog or path")
            self._sources = {str(name): value for name, value in catalogs.items()}
        else:
            source = default_catalog_path() if catalog_or_path is None else catalog_or_path
            self._sources = {self._source_name(source): source}

        self._build_widgets(page_size, max_thumbnails)
        self._open(next(iter(self._sources)))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def default(cls, **kwargs) -> "SearchApp":
        """The app on the default catalog (``$CB_CATALOG`` or ``data/demo``); see :func:`default_app`.

        Without ``$CB_CATALOG``, every other catalog folder next to ``data/demo`` (e.g. the
        multi-object ``data/demo-multi``) is offered in the catalog selector too, ``demo`` first.
        """
        if os.environ.get("CB_CATALOG", "").strip():
            return cls(None, **kwargs)
        default = default_catalog_path()
        others = sorted(p.parent for p in default.parent.glob("*/manifest.json") if p.parent != default)
        if not others:
            return cls(None, **kwargs)
        return cls(catalogs={default.name: default, **{p.name: p for p in others}}, **kwargs)

    @staticmethod
    def _source_name(source) -> str:
        path = getattr(source, "path", source)
        try:
            return Path(path).name or str(path)
        except TypeError:
            return str(source)

    def _build_widgets(self, page_size: int, max_thumbnails: int) -> None:
        self.title = widgets.HTML(_STYLE + '<span class="cb-title">clipbranches image search</span>')
        self.catalog_select = widgets.Dropdown(options=list(self._sources), description="Catalog:",
                                               layout=widgets.Layout(width="260px"))
        self.catalog_select.add_class("cb-catalog")
        self.catalog_select.layout.display = "" if len(self._sources) > 1 else "none"
        self.catalog_select.observe(self._on_catalog_change, names="value")
        self.warmup_note = widgets.HTML('<span class="cb-warmup" data-done="0">warming up…</span>')
        top = widgets.HBox([self.title, self.catalog_select, self.warmup_note],
                           layout=widgets.Layout(align_items="center", flex_flow="row wrap"))

        self.query = widgets.Text(placeholder="Describe what you are looking for (a red star), or #123 for an item",
                                  layout=widgets.Layout(width="380px"), continuous_update=False)
        self.query.add_class("cb-query")
        with warnings.catch_warnings():  # on_submit is deprecated in ipywidgets 8 but is the only Enter hook
            warnings.simplefilter("ignore", DeprecationWarning)
            self.query.on_submit(lambda _w: self._guard(self._do_search))
        self.search_button = widgets.Button(description="Search", button_style="primary", icon="search",
                                            tooltip="Text search (Enter in the box does the same)")
        self.search_button.add_class("cb-search")
        self.search_button.on_click(lambda _b: self._guard(self._do_search))
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Search by image")
        self.upload.add_class("cb-upload")
        self.upload.observe(self._on_upload, names="value")
        self.more_like_button = widgets.Button(description="More like this", icon="clone",
                                               tooltip="Search by the item you marked positive last")
        self.more_like_button.add_class("cb-more-like")
        self.more_like_button.on_click(lambda _b: self._guard(self._do_more_like))
        query_row = widgets.HBox([self.query, self.search_button, self.upload, self.more_like_button],
                                 layout=widgets.Layout(flex_flow="row wrap", align_items="center"))

        self.model = widgets.Dropdown(options=list(MODEL_OPTIONS), value="auto", description="Model:",
                                      layout=widgets.Layout(width="320px"))
        self.model.add_class("cb-model")
        style = {"description_width": "initial"}
        self.negatives = widgets.IntSlider(value=500, min=0, max=1000, step=100, description="Random negatives",
                                           style=style, continuous_update=False)
        self.negatives.add_class("cb-negatives")
        self.weight = widgets.IntSlider(value=1, min=1, max=100, step=1, description="Negative weight",
                                        style=style, continuous_update=False)
        self.weight.add_class("cb-weight")
        self.refine_button = widgets.Button(description="Fine-tune", button_style="success", icon="filter",
                                            tooltip="Train the model on your marks and find every match")
        self.refine_button.add_class("cb-refine")
        self.refine_button.on_click(lambda _b: self._guard(self._do_refine))
        self.next_button = widgets.Button(description="Label next", icon="check-square-o", disabled=True,
                                          tooltip="Show items to mark next: some from the answer (right?), "
                                                  "some from outside it (missed?); marking them measures "
                                                  "the answer")
        self.next_button.add_class("cb-next")
        self.next_button.on_click(lambda _b: self._guard(self._do_next))
        self.undo_button = widgets.Button(description="Undo", icon="undo", tooltip="Undo the last marking action")
        self.undo_button.add_class("cb-undo")
        self.undo_button.on_click(lambda _b: self._guard(self._do_undo))
        self.busy = widgets.HTML("")
        self.busy.add_class("cb-busy")
        options_row = widgets.HBox([self.model, self.negatives, self.weight, self.refine_button, self.busy],
                                   layout=widgets.Layout(flex_flow="row wrap", align_items="center"))

        self.error = widgets.HTML("")
        self.error.add_class("cb-error-area")
        self.stats = widgets.HTML(stats_html(0, "No search yet: type a query and press Enter."))
        self.stats.add_class("cb-stats-area")
        self.view = widgets.ToggleButtons(options=list(VIEW_OPTIONS), value="answer",
                                          disabled=True, layout=widgets.Layout(width="auto"),
                                          style={"button_width": "auto"},
                                          tooltips=["The last search's results, or every match of the last "
                                                    "fine-tuning", "A page of items to mark next (Label next)"])
        self.view.add_class("cb-view")
        self.view.observe(self._on_view_change_guarded, names="value")

        self.grid = ImageGrid(page_size=page_size, max_thumbnails=max_thumbnails)
        self.grid.on_similar(lambda item: self._guard(self._do_similar_tile, item))
        self.grid.on_restore(lambda text: self._guard(self._do_restore, text))
        self.grid.on_label_change(self._on_grid_labels)

        self.rules = widgets.HTML('<pre class="cb-code cb-rules">n/a</pre>')
        self.sql = widgets.HTML('<pre class="cb-code cb-sql">n/a</pre>')
        self.model_panel = widgets.Accordion(children=[self.rules, self.sql], selected_index=None)
        self.model_panel.set_title(0, "Model as rules")
        self.model_panel.set_title(1, "Model as SQL")
        self.model_panel.add_class("cb-model-panel")

        self.export_csv_button = widgets.Button(description="Results CSV", icon="download")
        self.export_csv_button.add_class("cb-export-csv")
        self.export_csv_button.on_click(lambda _b: self._guard(self._do_export, "csv"))
        self.export_json_button = widgets.Button(description="Results JSON", icon="download")
        self.export_json_button.add_class("cb-export-json")
        self.export_json_button.on_click(lambda _b: self._guard(self._do_export, "json"))
        self.save_button = widgets.Button(description="Save session", icon="save")
        self.save_button.add_class("cb-save-session")
        self.save_button.on_click(lambda _b: self._guard(self._do_save))
        self.download = widgets.HTML("")
        self.download.add_class("cb-download-area")
        export_row = widgets.HBox([self.export_csv_button, self.export_json_button, self.save_button, self.download],
                                  layout=widgets.Layout(flex_flow="row wrap", align_items="center"))

        self._controls = [self.query, self.search_button, self.upload, self.more_like_button, self.model,
                          self.negatives, self.weight, self.refine_button, self.undo_button,
                          self.export_csv_button, self.export_json_button, self.save_button]
        self.marks = widgets.HTML(self._marks_html())
        self.marks.add_class("cb-marks-area")
        view_row = widgets.HBox([widgets.Label("Show:"), self.view, self.next_button, self.undo_button, self.marks],
                                layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.children = [top, query_row, options_row, self.error, view_row, self.stats, self.grid,
                         self.model_panel, export_row]

    # -- catalogs ------------------------------------------------------------------------------

    def _open(self, name: str) -> None:
        """Open catalog ``name`` and start a fresh session (errors are shown, not raised)."""
        self.session, self.catalog, self.last_result, self.suggestions = None, None, None, None
        self._last_positive = None
        self._reset_views()
        try:
            catalog = self._opened.get(name)
            if catalog is None:
                source = self._sources[name]
                if isinstance(source, CatalogBase):
                    catalog = source
                else:
                    catalog = self._open_path(Path(source))
                self._opened[name] = catalog
        except ValueError as exc:
            self._show_error(str(exc))
            self._set_enabled(False)
            self.catalog_select.disabled = False
            self.warmed_up.set()
            self.warmup_note.value = '<span class="cb-warmup" data-done="1"></span>'
            return
        from ..session import SearchSession

        self.catalog = catalog
        self.session = SearchSession(catalog, random_state=self.random_state)
        self._update_marks()
        self._set_enabled(True)
        self._clear_error()
        self.upload.layout.display = ""
        # the browser keeps this catalog's session under a key of its codes: a reload gets it back
        self.grid.storage_key = f"session:{catalog.fingerprint[:32]}"
        self._start_warm_up(catalog)

    @staticmethod
    def _open_path(path: Path):
        from .. import open_catalog

        if not (path / "manifest.json").exists():
            if path.resolve() == default_catalog_path().resolve() or not path.exists():
                raise ValueError(f"No catalog at {path}. Build the demo catalog first:\n    {BUILD_HINT}\n"
                                 f"(or point the CB_CATALOG environment variable at a catalog folder).")
        return open_catalog(path)

    def _on_catalog_change(self, change) -> None:
        if change.new is None or change.new == change.old:
            return
        try:
            self._open(change.new)
        except Exception as exc:  # noqa: BLE001 - never a traceback in the UI
            log.exception("switching to catalog %r failed", change.new)
            self._show_error(f"Could not open catalog {change.new!r}: {exc}")

    def _reset_views(self) -> None:
        self._syncing = True
        try:
            self.grid.show([], labels={}, labelled_before=[])
        finally:
            self._syncing = False
        self.stats.value = stats_html(0, "No search yet: type a query and press Enter.")
        self.rules.value = '<pre class="cb-code cb-rules">n/a</pre>'
        self.sql.value = '<pre class="cb-code cb-sql">n/a</pre>'
        self.download.value = ""
        self._set_view("answer")
        self._update_marks()

    def _set_enabled(self, enabled: bool) -> None:
        for w in self._controls:
            w.disabled = not enabled
        self.grid.disabled = not enabled
        self._update_next_controls()

    def _update_next_controls(self) -> None:
        """"Label next" and the Show toggle work once there is an answer (a search or a refine)."""
        off = self.session is None or self.last_result is None
        self.next_button.disabled = off
        self.view.disabled = off

    def _set_view(self, value: str) -> None:
        """Move the Show toggle without it acting (the caller fills the grid)."""
        self._setting_view = True
        try:
            self.view.value = value
        finally:
            self._setting_view = False

    # -- warm-up -------------------------------------------------------------------------------

    def _start_warm_up(self, catalog) -> None:
        event = threading.Event()
        self.warmed_up = event
        self.warm_up_error = None
        if not self._warm_up_enabled:
            event.set()
            self.warmup_note.value = '<span class="cb-warmup" data-done="1"></span>'
            return
        self.warmup_note.value = ('<span class="cb-warmup" data-done="0"><span class="cb-spinner"></span>'
                                  'warming up…</span>')
        thread = threading.Thread(target=self._warm_up, args=(catalog, event), name="cb-warm-up", daemon=True)
        self._warm_up_thread = thread
        thread.start()

    def _warm_up(self, catalog, event: threading.Event) -> None:
        """:meth:`SearchSession.warm_up` in the background; the note says when it is done."""
        t0 = time.perf_counter()
        problems = []
        try:
            from ..session import SearchSession

            problems = SearchSession.warm_up(catalog, k=self.k)
        except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs the first click its time
            problems = [f"warm-up: {exc}"]
            log.exception("warm-up failed for %s", catalog)
        finally:
            if event is self.warmed_up:
                self.warm_up_error = "; ".join(problems) or None
                note = ("" if not problems else
                        f'<span style="color:#a61b1b">warm-up incomplete: {html.escape(problems[0])}</span>')
                self.warmup_note.value = f'<span class="cb-warmup" data-done="1">{note}</span>'
            log.info("warm-up finished in %.1f s", time.perf_counter() - t0)
            event.set()

    # -- error handling ------------------------------------------------------------------------

    def _guard(self, action, *args) -> None:
        """Run a UI action: ValueError -> its message; anything else -> a short message + log."""
        try:
            action(*args)
            self._keep_session()
        except ValueError as exc:
            self._show_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - never a traceback in the UI
            log.exception("clipbranches app action %s failed", getattr(action, "__name__", action))
            self._show_error(f"Something went wrong ({type(exc).__name__}: {exc}). Details are in the log.")

    def _keep_session(self) -> None:
        """Send the session (marks, query, rounds, pages) to the browser, which keeps it for a reload."""
        if self.session is not None and self.grid.storage_key:
            self.grid.store(self.session.to_json())

    def _do_restore(self, text: str) -> None:
        """The browser's kept session for this catalog (a reload of the page): its marks, its query's
        results, and, after a Fine-tune, the answer to its marks again."""
        from ..session import SearchSession

        current = self.session
        if current is None or current.labels or current.query is not None:
            return  # this page has its own session already: nothing to bring back
        restored = SearchSession.from_json(text, self.catalog, source="the session kept by this browser")
        if not restored.labels and restored.query is None:
            return
        self.session = restored
        self._update_marks()
        if restored.query is not None:
            self._after_search(restored.repeat_query(self.k))
        if restored.history:
            last = restored.history[-1]
            self.model.value = last.get("requested_model") or last["model"]
            self._after_refine(restored.answer_again())  # the last round's answer, not a new round
        self._sync_grid_labels()

    def _show_error(self, message: str) -> None:
        self.error.value = f'<div class="cb-error">{html.escape(str(message))}</div>'

    def _clear_error(self) -> None:
        self.error.value = ""

    def _require_session(self):
        if self.session is None:
            raise ValueError("no catalog is open")
        return self.session

    # -- labels --------------------------------------------------------------------------------

    def _on_grid_labels(self, ids, label) -> None:
        if self._syncing or self.session is None:
            return
        try:
            self.session.label(list(ids), label)
            if label == "pos" and ids:
                self._last_positive = int(ids[-1])
            self._update_marks()
            self._clear_error()
            self._keep_session()
        except ValueError as exc:
            self._show_error(str(exc))
        except Exception as exc:  # noqa: BLE001
            log.exception("labelling failed")
            self._show_error(f"Could not store the marks ({type(exc).__name__}: {exc}).")

    def _sync_grid_labels(self) -> None:
        """Make the grid's labels equal the session's (without echoing back into the session)."""
        self._syncing = True
        try:
            self.grid.labels = {str(i): v for i, v in self.session.labels.items()}
        finally:
            self._syncing = False

    def _show_items(self, ids, scores, *, shown: int | None = None, notes: dict | None = None) -> None:
        session = self.session
        catalog = session.catalog
        ids = [int(i) for i in np.asarray(ids)]
        captions = None
        page = catalog.items_of(ids)
        if "caption" in page.column_names and ids:
            captions = ["" if c is None else str(c) for c in page.column("caption").to_pylist()]
        labels = session.labels
        self._syncing = True
        try:
            self.grid.show(ids, None if scores is None else [float(s) for s in np.asarray(scores)],
                           thumbnail=catalog.thumbnail,
                           captions=captions, labels=labels, labelled_before=sorted(labels), shown=shown,
                           notes=notes)
        finally:
            self._syncing = False

    # -- actions -------------------------------------------------------------------------------

    def _do_search(self) -> None:
        session = self._require_session()
        text = self.query.value
        if not text.strip():
            raise ValueError("Type a query first (the search box is empty).")
        item = re.fullmatch(r"\s*#\s*(\d+)\s*", text)
        if item:  # "#123": items like catalog item 123 (the way in where a catalog has no text encoder)
            result = session.image_search(int(item.group(1)), k=self.k)
        else:
            try:
                result = session.text_search(text, k=self.k)
            except ValueError as exc:
                if "records no query encoder" in str(exc):
                    raise ValueError(f"{exc}. Search by an item instead: type #123 (an item id).") from None
                raise
        self._after_search(result)

    def _do_similar_tile(self, item: int) -> None:
        """The ≈ button (or "s") on a tile: search by that item's picture."""
        self._after_search(self._require_session().image_search(int(item), k=self.k))

    def _do_more_like(self) -> None:
        session = self._require_session()
        item = self._last_positive
        if item is None:
            shown_pos = [i for i in self.grid.shown_ids if self.grid.label_of(i) == "pos"]
            item = shown_pos[0] if shown_pos else None
        if item is None:
            raise ValueError("Mark a tile positive first: \"More like this\" searches by the item you marked last.")
        self._after_search(session.image_search(int(item), k=self.k))

    def _on_upload(self, change) -> None:
        files = change.new
        if not files:
            return
        self._guard(self._do_upload, files)

    def _do_upload(self, files) -> None:
        session = self._require_session()
        from PIL import UnidentifiedImageError

        first = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
        content, name = first["content"], first.get("name", "the file")
        if len(content) > MAX_UPLOAD_BYTES:
            raise ValueError(f"{name} is {len(content) / 2**20:.0f} MB; uploads of at most "
                             f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB are accepted")
        try:
            image = open_picture(io.BytesIO(bytes(content)), name=name)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{name} is not a readable picture ({type(exc).__name__})") from None
        try:
            result = session.image_search(image, k=self.k)
        finally:
            try:
                self.upload.value = ()  # allow uploading the same file again
            except Exception:  # noqa: BLE001 - older ipywidgets
                pass
        self._after_search(result)

    def _after_search(self, result) -> None:
        self.last_result, self.suggestions = result, None
        self._set_view("answer")
        self._update_next_controls()
        self._render_search(result)
        self.rules.value = '<pre class="cb-code cb-rules">n/a (no model yet: mark items and fine-tune)</pre>'
        self.sql.value = '<pre class="cb-code cb-sql">n/a</pre>'
        self.download.value = ""
        self._clear_error()

    def _marks_html(self) -> str:
        session = getattr(self, "session", None)
        pos, neg = (0, 0) if session is None else (len(session.positives), len(session.negatives))
        return (f'<span class="cb-marks" data-pos="{pos}" data-neg="{neg}">marked: {pos} positive, '
                f'{neg} negative</span>')

    def _update_marks(self) -> None:
        self.marks.value = self._marks_html()

    def _render_search(self, result) -> None:
        """The grid and statistics for a search's results (the "answer" view before any refine)."""
        self.stats.value = search_stats_html(result)
        self._show_items(result.ids, result.scores, shown=len(result))  # last: the grid paints a finished view

    def _do_refine(self) -> None:
        session = self._require_session()
        if self._busy:
            return
        self._busy = True
        button = self.refine_button
        button.disabled = True
        button.description = "Fine-tuning…"
        self.busy.value = '<span class="cb-spinner"></span>Fine-tuning…'
        try:
            result = session.refine(self.model.value, n_random_negatives=int(self.negatives.value),
                                    negative_weight=float(self.weight.value))
            self._after_refine(result)
        finally:
            self._busy = False
            button.description = "Fine-tune"
            button.disabled = self.session is None
            self.busy.value = ""

    def _after_refine(self, result) -> None:
        self.last_result, self.suggestions = result, None
        self._set_view("answer")
        self._update_next_controls()
        self._render_refine(result)
        name = model_label(result.model_name)
        if result.rules is not None:
            if result.model_name == "branches":
                rules = "\n".join(f"box {n + 1}: {r}" for n, r in enumerate(result.rules)) or "(no boxes)"
            else:
                rules = "\n".join(result.rules)
            self.rules.value = f'<pre class="cb-code cb-rules">{html.escape(rules)}</pre>'
        else:
            self.rules.value = (f'<pre class="cb-code cb-rules">n/a: {html.escape(name)} is not a plain union of '
                                f'boxes (Decision branches give rules, Linear its weights)</pre>')
        if result.sql:
            self.sql.value = f'<pre class="cb-code cb-sql">{html.escape(result.sql)}</pre>'
        else:
            self.sql.value = '<pre class="cb-code cb-sql">n/a: only Decision branches produce SQL</pre>'
        self.download.value = ""
        self._clear_error()

    def _render_refine(self, result) -> None:
        """The grid and statistics for a refine's answer."""
        self.stats.value = refine_stats_html(result)
        self._show_items(result.ids, result.scores)  # first page; "Load more" shows the rest

    # -- suggestions ("Label next") and the Show toggle ---------------------------------------

    def _do_next(self) -> None:
        """"Label next": a fresh page of suggestions (the app's ``k`` items) in the grid."""
        session = self._require_session()
        if self.last_result is None:
            raise ValueError("Nothing to suggest from yet: search first (or fine-tune), then press "
                             "\"Label next\" for items to mark.")
        self.suggestions = session.suggest(self.k)
        self._set_view("suggestions")
        self._render_suggestions(self.suggestions)
        self._clear_error()

    def _on_view_change(self, change) -> None:
        if self._setting_view or change.new == change.old:
            return
        try:
            if change.new == "suggestions":
                if self.suggestions is None:
                    self._do_next()
                else:
                    self._render_suggestions(self.suggestions)
            else:
                self._render_answer()
            self._clear_error()
        except Exception:  # shown by _guard; the toggle goes back to what the grid still shows
            self._set_view(change.old)
            raise

    def _on_view_change_guarded(self, change) -> None:
        self._guard(self._on_view_change, change)

    def _render_answer(self) -> None:
        result = self.last_result
        if result is None:
            raise ValueError("No answer yet: search first.")
        if hasattr(result, "model_name"):
            self._render_refine(result)
        else:
            self._render_search(result)

    def _render_suggestions(self, page) -> None:
        """The grid and statistics for a page of suggestions: each tile noted in / not in the answer."""
        in_answer = np.asarray(page.in_answer, bool)
        notes = {int(i): NOTE_IN_ANSWER if a else NOTE_EXPLORE for i, a in zip(page.ids, in_answer)}
        self.stats.value = suggestions_stats_html(page, self.last_result)
        self._show_items(page.ids, None, shown=len(page), notes=notes)  # scores: draw probabilities, not shown

    def _do_undo(self) -> None:
        session = self._require_session()
        session.undo()
        self._sync_grid_labels()
        self._update_marks()
        self._clear_error()

    # -- exports -------------------------------------------------------------------------------

    def export_text(self, format: str = "csv") -> str:
        """The last result as CSV or JSON text (exactly what ``session.export`` writes)."""
        session = self._require_session()
        if session.last_result is None:
            raise ValueError("Nothing to export yet: run a search or fine-tune first.")
        return session.export_text(format)

    def session_text(self) -> str:
        """The session as JSON text (exactly what ``session.save`` writes)."""
        return self._require_session().to_json()

    def _do_export(self, format: str) -> None:
        text = self.export_text(format)
        mime = "text/csv" if format == "csv" else "application/json"
        self.download.value = data_link(text, f"clipbranches-results.{format}", mime)
        self._clear_error()

    def _do_save(self) -> None:
        text = self.session_text()
        self.download.value = data_link(text, "clipbranches-session.json", "application/json")
        self._clear_error()

    # -- helpers -------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"SearchApp({self.catalog!r})"
