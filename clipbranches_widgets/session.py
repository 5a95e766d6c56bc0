"""One user's search session: queries, persistent marks, refine rounds, save/load and export.

The session is the notebook-facing state machine behind the widgets (reference section 5): a text
or picture query shows its nearest items; the user marks items positive or negative (marks persist
across queries and rounds, and can be undone); ``refine`` trains a model on the marks plus random negatives and answers it over the WHOLE
catalog: by default the family (decision branches, their ensemble, or a linear model) whose
estimated F1 on the user's own marks is best, with an estimate of the answer's precision and
recall. ``suggest`` picks what to mark next: 30% confirms the answer, 70% explores outside it,
every item drawn at random with a known probability so that the marks measure the answer
(:mod:`clipbranches_widgets.exploration`).

Random negatives follow the engine's fixed sampling (reference section 7.3): drawn afresh from the
whole catalog per request with a local, seeded generator, never from labelled items nor (by
default) from the current query's top neighbourhood, where unlabelled positives are dense.

    from clipbranches_widgets import open_catalog
    from clipbranches_widgets.session import SearchSession

    session = SearchSession(open_catalog("catalogs/demo"), random_state=0)
    hits = session.text_search("a red star")
    session.label(hits.ids[:10], "pos")
    result = session.refine()                 # "auto": the best family for these marks
    print(result.count, result.model_name, result.estimate["precision"], result.estimate["recall"])
    page = session.suggest(60)                # what to mark next


Importing this module does not import torch or ipywidgets; the catalog loads its encoder on the
first text or picture query.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_write_text
from .catalog import check_k
from .engine import BranchEnsemble, DecisionBranches, draw_training_rows
from .engine._validation import MAX_WEIGHT_RATIO, check_random_state
from .engine.baselines import make_baseline
from .engine.linear import LinearCodes
from .engine.selection import FEW_POSITIVES, held_out_membership
from .exploration import Page, design_weights, estimate_quality, inclusion_probabilities, neighbourhood_size, \
    systematic_sample

log = logging.getLogger(__name__)

__all__ = ["SearchSession", "QueryResult", "RefineResult", "MODELS", "LABELS"]

#: refine's defaults on catalogs of 1,000+ / 4,000+ items (smaller ones scale them down)
DEFAULT_RANDOM_NEGATIVES = 500
DEFAULT_EXCLUDE_TOP = 2000
#: model names accepted by :meth:`SearchSession.refine`: "auto" (the default) picks one of
#: AUTO_FAMILIES per refine; the others are the original's db, ens, dtree, rf plus a linear model
MODELS = ("auto", "branches", "ensemble", "linear", "tree", "forest")
#: the families "auto" chooses among, in order of preference. Branches are left out: a single
#: box model is rarely better than the ensemble of them, and one more noisy candidate made the
#: choice worse (benchmarks/rounds.py: size+colour+shape round 3, 0.91 with it, 0.95 without)
AUTO_FAMILIES = ("ensemble", "linear")
#: "auto" keeps the first family in AUTO_FAMILIES whose estimated F1 is within this of the best
AUTO_MARGIN = 0.03
#: what a session's box models (branches, ensemble) change from the engine's defaults. The engine's
#: "tapered" class weights and open sides that close less as positives grow were tuned on the Figure-3
#: protocol, where every negative is a true one. A session's random negatives are unlabelled: for a
#: broad concept about one in eight is a positive, and weighting the positives down against them
#: shrinks the boxes. Measured (benchmarks/rounds.py, 32 broad concepts, round 3, ensemble, median
#: F1): engine defaults 0.73, these 0.85.
BOX_MODEL_PARAMS = {"class_weight": "sqrt", "stop_infinite_split": 0.25}
#: folds of the cross-validation behind estimates and the automatic choice
CV_FOLDS = 3
#: estimators of the ensembles fitted for cross-validation (the answer's has the engine default,
#: 25): held-out votes of 10 bagged models track those of 25, at 1/3 of the cost of a refine
CV_ENSEMBLE_ESTIMATORS = 10
#: label names accepted by :meth:`SearchSession.label`
LABELS = ("pos", "neg", "none")

SESSION_FORMAT = "clipbranches.session"
SESSION_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: before suggestion pages
# bit generators a saved random state may name (restored by name, so it must be one of numpy's)
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


@dataclass
class QueryResult:
    """The items a query shows: ``ids`` (int64, best first) and ``scores`` (cosine similarity).

    query: ``{"type": "text", "text": ...}`` or ``{"type": "image", "item_id": id or None}`` (None
    for a picture that is not a catalog item), or ``{"type": "suggest", ...}`` for
    :meth:`SearchSession.suggest`. timings: seconds for ``encode`` and ``nn``.
    For suggestions, ``scores`` are the probabilities each item had of being drawn and
    ``in_answer`` says which items the current answer holds (to confirm) and which it does not
    (explored: did it miss them?); None for plain searches.
    """

    ids: np.ndarray
    scores: np.ndarray
    query: dict
    timings: dict = field(default_factory=dict)
    in_answer: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class RefineResult:
    """What one refine round found: every catalog item the model calls positive, and how.

    ids / scores: all positive catalog ids, best first (scores: box depth for ``branches``, vote
    fraction for ``ensemble``, class probability for ``tree`` / ``forest``); count: ``len(ids)``.
    model_name / model: the name and the fitted model. rules / sql: the boxes as readable rules
    and as one SQL statement (``branches`` only; None for the other models, whose decision is not
    a plain union of boxes). n_boxes: boxes learnt (None for tree/forest). stats: the engine's
    search statistics (method, rows checked, ...). timings: seconds for ``encode`` (query
    embedding, 0 when already known), ``nn`` (query neighbourhood), ``sampling``, ``train``,
    ``apply`` and ``total``. n_positives / n_negatives: user marks used. negative_ids: the random
    negatives actually drawn (sorted); n_random_negatives: how many; negatives_source: where they
    came from, in words; n_excluded_neighbours: how many top neighbours of the query were barred.
    random_state: the integer seed that reproduces this round. requested_model: what was asked
    ("auto" or a family). estimate: the answer's estimated quality (``precision``, ``recall``,
    ``f1`` in [0, 1], ``positives``, ``method`` in words; see
    :func:`~clipbranches_widgets.exploration.estimate_quality`). selection: per family tried, its
    estimated precision / recall / f1, and ``reason``: why ``model_name`` was chosen.
    """

    ids: np.ndarray
    scores: np.ndarray
    model_name: str
    model: object
    rules: list | None
    sql: str | None
    n_boxes: int | None
    stats: dict
    timings: dict
    n_positives: int
    n_negatives: int
    negative_ids: np.ndarray
    negatives_source: str
    n_excluded_neighbours: int
    random_state: int
    requested_model: str = ""
    estimate: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_random_negatives(self) -> int:
        return int(self.negative_ids.shape[0])

    def __len__(self) -> int:
        return self.count


def _csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting with = + - @ (or a tab / CR) would be
    run as a formula (CSV injection), so it gets a leading apostrophe, as OWASP advises."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class SearchSession:
    """One user's search state over a :class:`~clipbranches_widgets.catalog.Catalog`.

    Parameters
    ----------
    catalog : Catalog
        The opened catalog. Several sessions may share one catalog, also from several threads.
    random_state : None, int or numpy Generator
        Seeds every refine round that is not given its own ``random_state`` (one seed is drawn per
        round from a local generator; the global numpy RNG is never used).

    A session's own methods are serialised by a lock, so a UI may call them from callbacks; give
    every user a session of their own.
    """

    def __init__(self, catalog, random_state=None):
        self.catalog = catalog
        self._rng = check_random_state(random_state)
        self._lock = threading.RLock()
        self._labels: dict[int, str] = {}
        self._undo: list[dict[int, str | None]] = []  # per action: id -> label before it (None: unlabelled)
        self._history: list[dict] = []
        self._query: dict | None = None  # {"type": ..., ...} of the current query
        self._query_vector: np.ndarray | None = None  # its embedding, (1, d) float32
        self._last_search: QueryResult | None = None
        self._last_refine: RefineResult | None = None
        self._pages: list[Page] = []  # suggestion pages shown, the samples behind the estimates
        self._neighbourhood_cache = None  # (query vector, its top ids), reused while the query stands

    def __repr__(self) -> str:
        return (f"SearchSession({self.catalog!r}, {len(self.positives)} positive, {len(self.negatives)} negative, "
                f"{len(self._history)} rounds)")

    @classmethod
    def warm_up(cls, catalog, *, k: int = 60) -> list[str]:
        """Make the first real search, Fine-tune and "Label next" on ``catalog`` fast.

        Loads the query encoder and runs, in a throwaway session, what they run: a search by item,
        marks on its results, refine("auto") (every family it tries, with cross-validation), a
        refine of each box / linear family "auto" did not try (they apply by the fused scan; no box
        index is built, see ``Catalog.box_index``), and suggest; so the Numba kernels are compiled and
        the code paths warm. Returns
        the problems met, in words (empty when all went well); it never raises for them: a catalog
        without a text encoder still works by item.
        """
        problems = []
        try:
            catalog.query_encoder()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"query encoder: {exc}")
            log.warning("warm-up: no query encoder for %s: %s", catalog, exc)
        try:
            warm = cls(catalog, random_state=0)
            shown = warm.image_search(0, k=min(int(k), catalog.n_items)).ids.tolist()
            third = max(2, len(shown) // 3)
            warm.label(shown[:third], "pos")
            warm.label(shown[third:], "neg")
            tried = set(warm.refine("auto").selection) - {"reason"}
            for family in ("ensemble", "linear", "branches"):
                if family not in tried:
                    warm.refine(family)
            warm.suggest(min(int(k), catalog.n_items))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"engine: {exc}")
            log.exception("warm-up of the engine failed for %s", catalog)
        return problems

    # -- queries -------------------------------------------------------------------------------

    def text_search(self, text, k: int = 60) -> QueryResult:
        """Show the ``k`` items nearest to a text query; it becomes the current query."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text query must be a non-empty string; got {text!r}")
        k = check_k(k)
        t0 = time.perf_counter()
        vector = self.catalog.query_encoder().encode_texts([text.strip()])
        return self._show({"type": "text", "text": text.strip()}, vector, k, time.perf_counter() - t0)

    def image_search(self, image_or_item_id, k: int = 60) -> QueryResult:
        """Show the ``k`` items nearest to a catalog item (by id: its stored code) or a PIL image."""
        k = check_k(k)
        t0 = time.perf_counter()
        if _is_int(image_or_item_id):
            item = self.catalog.check_id(image_or_item_id)
            # the item's stored code, as the catalog's own "search by image" uses
            vector = self.catalog.quantizer.dequantize(self.catalog.rows([item]))
            query = {"type": "image", "item_id": item}
        elif hasattr(image_or_item_id, "convert") and hasattr(image_or_item_id, "size"):  # a PIL image
            vector = self.catalog.query_encoder().encode_images([image_or_item_id])
            query = {"type": "image", "item_id": None}
        else:
            raise ValueError(f"image_search takes a catalog item id or a PIL image; got {type(image_or_item_id).__name__}")
        return self._show(query, vector, k, time.perf_counter() - t0)

    def repeat_query(self, k: int = 60) -> QueryResult:
        """The current query's ``k`` nearest items again, from its kept embedding (no encoder needed:
        also a loaded session's uploaded picture)."""
        if self._query_vector is None or self._query is None:
            raise ValueError("no query to repeat: search first")
        return self._show(dict(self._query), self._query_vector, check_k(k), 0.0)

    def _show(self, query: dict, vector, k: int, encode_s: float) -> QueryResult:
        vector = np.asarray(vector, np.float32).reshape(1, -1)
        t0 = time.perf_counter()
        ids, scores = self.catalog.search_vectors(vector, k=k)
        result = QueryResult(ids[0].astype(np.int64), scores[0].astype(np.float64), dict(query),
                             {"encode": encode_s, "nn": time.perf_counter() - t0})
        with self._lock:
            self._query, self._query_vector = dict(query), vector
            self._last_search, self._last_refine = result, None
        return result

    @property
    def query(self) -> dict | None:
        """The current query (``{"type": "text", "text": ...}`` or ``{"type": "image", ...}``), or None."""
        with self._lock:
            return None if self._query is None else dict(self._query)

    # -- labels --------------------------------------------------------------------------------

    def label(self, ids, label: str) -> None:
        """Mark one id or a list of ids ``"pos"``, ``"neg"`` or ``"none"`` (unlabelled).

        Marks persist across queries and refine rounds. One call is one action for :meth:`undo`
        (a call that changes nothing is not recorded).
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}; got {label!r}")
        id_list = [self.catalog.check_id(i) for i in ([ids] if _is_int(ids) else self._as_id_list(ids))]
        with self._lock:
            before = {}
            for i in id_list:
                old = self._labels.get(i)
                new = None if label == "none" else label
                if old != new and i not in before:
                    before[i] = old
            if not before:
                return
            for i in before:
                if label == "none":
                    del self._labels[i]
                else:
                    self._labels[i] = label
            self._undo.append(before)

    def undo(self) -> None:
        """Revert the last :meth:`label` action; ValueError when there is nothing to undo."""
        with self._lock:
            if not self._undo:
                raise ValueError("nothing to undo: no labelling action since the session started or was loaded")
            for i, old in self._undo.pop().items():
                if old is None:
                    self._labels.pop(i, None)
                else:
                    self._labels[i] = old

    @property
    def labels(self) -> dict[int, str]:
        """A copy of the marks: ``{item id: "pos" or "neg"}`` (unlabelled ids are absent)."""
        with self._lock:
            return dict(self._labels)

    @property
    def positives(self) -> list[int]:
        """Ids marked positive, ascending."""
        with self._lock:
            return sorted(i for i, v in self._labels.items() if v == "pos")

    @property
    def negatives(self) -> list[int]:
        """Ids marked negative, ascending."""
        with self._lock:
            return sorted(i for i, v in self._labels.items() if v == "neg")

    # -- refine --------------------------------------------------------------------------------

    def refine(self, model: str = "auto", *, n_random_negatives: int | None = None, negative_weight: float = 1,
               random_state=None, exclude_top: int | None = None) -> RefineResult:
        """Train a model on the marks and return every catalog item it calls positive.

        Parameters
        ----------
        model : "auto" (default), "branches" (DecisionBranches), "ensemble" (BranchEnsemble),
            "linear" (LinearCodes, logistic regression on the codes), "tree" or "forest"
            (scikit-learn baselines); the engine's default parameters, except BOX_MODEL_PARAMS
            for the box models. "auto" fits
            ensemble, linear and branches and keeps the one with the best estimated F1 on these
            marks (``result.selection`` says why).
        n_random_negatives : int in 0..N, default min(500, N // 2)
            Unlabelled catalog rows drawn at random and used as negatives (fewer when fewer rows
            are eligible). 0 is allowed when some items are marked negative.
        negative_weight : float > 0, default 1
            Sample weight of each user-marked negative relative to a random one.
        random_state : None, int or Generator
            Seeds this round (sampling and model); None draws a seed from the session's generator.
        exclude_top : int >= 0, default min(2000, N // 2)
            Random negatives are never drawn from the current query's top ``exclude_top``
            neighbours (clipped to the catalog size; nothing is barred without a current query).
            Both defaults scale with small catalogs, so a 50-item catalog refines as a 50,000-item one.

        Every answer comes with ``result.estimate``: its precision and recall estimated from the
        marks (by cross-validation, and from the suggestion pages marked so far).
        """
        return self._refine(model, n_random_negatives, negative_weight, random_state, exclude_top, record=True)

    def answer_again(self) -> RefineResult | None:
        """The last round's answer again, to the current marks, with that round's model, settings and
        seed; not a new round in :attr:`history`. For a session brought back after a page reload
        (:meth:`from_json` keeps rounds, not answers). None before the first round."""
        with self._lock:
            last = dict(self._history[-1]) if self._history else None
        if last is None:
            return None
        return self._refine(last.get("requested_model") or last["model"], last["n_random_negatives"],
                            last["negative_weight"], last["random_state"], last["exclude_top"], record=False)

    def _refine(self, model, n_random_negatives, negative_weight, random_state, exclude_top, *,
                record: bool) -> RefineResult:
        """:meth:`refine`'s work; ``record`` adds the round to the history."""
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
        n = self.catalog.n_items
        n_random_negatives = min(DEFAULT_RANDOM_NEGATIVES, n // 2) if n_random_negatives is None else n_random_negatives
        exclude_top = min(DEFAULT_EXCLUDE_TOP, n // 2) if exclude_top is None else exclude_top
        if not _is_int(n_random_negatives) or not 0 <= n_random_negatives <= n:
            raise ValueError(f"n_random_negatives must be an integer in 0..{n} (the catalog size); "
                             f"got {n_random_negatives!r}")
        if isinstance(negative_weight, (bool, np.bool_)) or not isinstance(negative_weight, (int, float, np.integer, np.floating)) \
                or not math.isfinite(negative_weight) or not 0 < negative_weight <= MAX_WEIGHT_RATIO:
            raise ValueError(f"negative_weight must be a number in (0, {MAX_WEIGHT_RATIO:.0e}]; got {negative_weight!r}")
        if not _is_int(exclude_top) or exclude_top < 0:
            raise ValueError(f"exclude_top must be an integer >= 0; got {exclude_top!r}")
        with self._lock:
            pos, neg = self.positives, self.negatives
            if not pos:
                raise ValueError("mark at least one positive item before refining")
            if n_random_negatives == 0 and not neg:
                raise ValueError("no negatives: mark some items negative or set n_random_negatives > 0")
            seed = self._round_seed(random_state)
            rng = np.random.default_rng(seed)
            timings = {}
            t_start = time.perf_counter()
            neighbours, n_top = self._neighbourhood(min(int(exclude_top), n), timings)

            t0 = time.perf_counter()
            drawn = draw_training_rows(n, pos, neg, n_random_negatives=int(n_random_negatives),
                                       negative_weight=float(negative_weight), exclude_ids=neighbours,
                                       random_state=rng)
            train = drawn.with_rows(self.catalog.rows(drawn.ids))
            timings["sampling"] = time.perf_counter() - t0

            model_seed = int(rng.integers(2**31 - 1))  # sklearn takes seeds below 2**32
            families = AUTO_FAMILIES if model == "auto" else (model,)
            timings["train"] = timings["apply"] = timings["cv"] = timings["estimate"] = 0.0
            # rows the random negatives were drawn from: all but the labelled ones and the query's top
            n_eligible = n - len(set(neighbours.tolist()) | set(self._labels))
            fits = {f: self._fit_and_apply(f, train, model_seed, n_eligible, timings) for f in families}
            chosen, selection = self._choose(model, fits, len(pos))
            fitted, found, estimate = fits[chosen]
            timings["total"] = time.perf_counter() - t_start

            where = "random catalog rows outside the labelled ids"
            if n_top:
                where = (f"random catalog rows outside the query's top-{n_top} neighbours "
                         f"and outside the labelled ids")
            random_ids = np.sort(train.ids[train.source == "random"])
            result = RefineResult(
                ids=found.ids, scores=found.scores, model_name=chosen, model=fitted,
                rules=fitted.to_rules() if chosen in ("branches", "linear") else None,
                sql=fitted.to_sql() if chosen == "branches" else None,
                n_boxes=len(fitted.boxes) if chosen in ("branches", "ensemble") else None,
                stats=dict(found.stats), timings=timings, n_positives=len(pos), n_negatives=len(neg),
                negative_ids=random_ids, negatives_source=where, n_excluded_neighbours=n_top, random_state=seed,
                requested_model=model, estimate=estimate, selection=selection)
            self._last_refine = result
            if not record:
                return result
            self._history.append({
                "round": len(self._history) + 1, "query": None if self._query is None else dict(self._query),
                "model": chosen, "requested_model": model, "n_pos": len(pos), "n_neg": len(neg),
                "n_random_negatives": result.n_random_negatives, "negative_weight": float(negative_weight),
                "exclude_top": n_top, "random_state": seed, "count": result.count, "n_boxes": result.n_boxes,
                "estimate": {k: estimate[k] for k in ("precision", "recall", "f1")}, "timings": dict(timings)})
            return result

    def _fit_and_apply(self, family: str, train, seed: int, n_eligible: int, timings: dict):
        """Fit ``family`` on ``train``, answer it over the catalog, and estimate the answer's quality."""
        t0 = time.perf_counter()
        held = held_out_membership(lambda s: self._make_model(family, s, for_cv=True), train.X, train.y,
                                   train.sample_weight, n_splits=CV_FOLDS, random_state=seed)
        t1 = time.perf_counter()
        fitted = self._make_model(family, seed).fit(train.X, train.y, sample_weight=train.sample_weight)
        t2 = time.perf_counter()
        found = self.catalog.apply(fitted)
        t3 = time.perf_counter()
        timings["cv"] += t1 - t0
        timings["train"] += t2 - t1
        timings["apply"] += t3 - t2
        t4 = time.perf_counter()
        held_out = {int(i): bool(m) for i, m in zip(train.ids, held) if m >= 0 and int(i) in self._labels}
        random_held = held[(train.source == "random") & (held >= 0)]
        estimate = estimate_quality(self.catalog.n_items, found.ids, self._labels, self._pages, held_out,
                                    neighbourhood=self._explored_neighbourhood(found.count),
                                    random_accepted=float(random_held.mean()) if random_held.size else None,
                                    n_eligible=n_eligible)
        timings["estimate"] += time.perf_counter() - t4
        return fitted, found, estimate

    @staticmethod
    def _choose(requested: str, fits: dict, n_positives: int) -> tuple[str, dict]:
        """The family to answer with, and per family its estimate plus the reason for the choice."""
        selection = {f: {k: est[k] for k in ("precision", "recall", "f1")} for f, (_, _, est) in fits.items()}
        if requested != "auto":
            selection["reason"] = f"{requested} was asked for"
            return requested, selection
        if n_positives < FEW_POSITIVES:
            selection["reason"] = (f"linear: with fewer than {FEW_POSITIVES} positives marked, a linear model "
                                   f"generalises best and cross-validation cannot tell the families apart")
            return "linear", selection
        best = max(fits[f][2]["f1"] for f in fits)
        # estimates are noisy: a family listed earlier wins unless a later one is clearly better
        chosen = next(f for f in AUTO_FAMILIES if f in fits and fits[f][2]["f1"] >= best - AUTO_MARGIN)
        others = ", ".join(f"{f} {selection[f]['f1']:.2f}" for f in fits if f != chosen)
        selection["reason"] = (f"{chosen}: the best estimated F1 on your marks ({selection[chosen]['f1']:.2f}; "
                               f"{others})")
        return chosen, selection

    # -- what to mark next ---------------------------------------------------------------------

    def suggest(self, k: int = 60, *, random_state=None) -> QueryResult:
        """The ``k`` items to mark next; never an item already marked.

        After a refine, 30% of the page confirms the answer (items drawn uniformly from it) and 70%
        explores outside it: mostly the current query's neighbourhood, where the answer's misses
        are, and a little of the whole catalog. Before any refine, the whole page explores the
        query's neighbourhood. Every item is drawn at random with a known probability
        (``result.scores``), so once marked the page measures the answer: the next refine's
        ``estimate`` uses it. Marking only some of the page is fine (the rest counts as missing).
        """
        k = check_k(k)
        with self._lock:
            if self._query_vector is None and self._last_refine is None:
                raise ValueError("nothing to suggest from: run a text or picture search (or a refine) first")
            t0 = time.perf_counter()
            rng = np.random.default_rng(self._round_seed(random_state))
            n = self.catalog.n_items
            answer = self._last_refine.ids if self._last_refine is not None else np.zeros(0, np.int64)
            neighbourhood = self._explored_neighbourhood(answer.shape[0])
            marked = np.fromiter(self._labels, np.int64, count=len(self._labels))
            pi = inclusion_probabilities(design_weights(n, marked, answer, neighbourhood), k)
            ids = systematic_sample(pi, rng)
            in_answer = np.isin(ids, answer)
            # confirm first, then explore; each part in the query's order where there is one
            query_rank = np.full(n, n, np.int64)  # past the end for items outside the neighbourhood
            if neighbourhood is not None:
                query_rank[neighbourhood] = np.arange(neighbourhood.shape[0])
            order = np.lexsort((ids, query_rank[ids], ~in_answer))
            ids, in_answer = ids[order], in_answer[order]
            self._pages.append(Page(ids, pi[ids]))
            query = {"type": "suggest", "n_in_answer": int(in_answer.sum()),
                     "n_explore": int((~in_answer).sum()), "of_query": None if self._query is None else dict(self._query)}
            return QueryResult(ids, pi[ids], query, {"suggest": time.perf_counter() - t0}, in_answer)

    def _explored_neighbourhood(self, answer_size: int) -> np.ndarray | None:
        """The current query's top ids that suggestions explore (None without a query)."""
        if self._query_vector is None:
            return None
        size = neighbourhood_size(self.catalog.n_items, answer_size)
        cached = self._neighbourhood_cache
        if cached is None or cached[0] is not self._query_vector or cached[1].shape[0] < size:
            ids = self.catalog.search_vectors(self._query_vector, k=size)[0][0].astype(np.int64)
            self._neighbourhood_cache = cached = (self._query_vector, ids)
        return cached[1][:size]

    @property
    def pages(self) -> list[Page]:
        """The suggestion pages shown so far (ids and the probability each had of being drawn)."""
        with self._lock:
            return list(self._pages)

    def _round_seed(self, random_state) -> int:
        """An integer seed for one round: from ``random_state`` if given, else from the session's RNG."""
        if random_state is None:
            return int(self._rng.integers(2**63 - 1))
        if _is_int(random_state):
            return int(random_state)
        return int(check_random_state(random_state).integers(2**63 - 1))

    def _neighbourhood(self, k: int, timings: dict) -> tuple[np.ndarray, int]:
        """The current query's top ``k`` ids (empty without a query) and how many there are."""
        timings["encode"] = 0.0  # the query's embedding was kept when it ran (and is saved with the session)
        t0 = time.perf_counter()
        if self._query_vector is None or k == 0:
            ids = np.zeros(0, np.int64)
        else:
            ids = self.catalog.search_vectors(self._query_vector, k=k)[0][0].astype(np.int64)
        timings["nn"] = time.perf_counter() - t0
        return ids, int(ids.shape[0])

    @staticmethod
    def _make_model(family: str, seed: int, for_cv: bool = False):
        """An unfitted model of ``family``: engine defaults but BOX_MODEL_PARAMS (a smaller ensemble for CV)."""
        if family == "branches":
            return DecisionBranches(random_state=seed, **BOX_MODEL_PARAMS)
        if family == "ensemble":
            if for_cv:
                return BranchEnsemble(n_estimators=CV_ENSEMBLE_ESTIMATORS, random_state=seed, **BOX_MODEL_PARAMS)
            return BranchEnsemble(random_state=seed, **BOX_MODEL_PARAMS)
        if family == "linear":
            return LinearCodes(random_state=seed)
        return make_baseline(family, random_state=seed)

    @property
    def history(self) -> list[dict]:
        """One summary per refine round: query, model, n_pos, n_neg, n_random_negatives, count,
        random_state, timings, ..."""
        with self._lock:
            return [dict(h) for h in self._history]

    @property
    def last_result(self):
        """The last refine result, or the last query's result if no refine followed it (or None)."""
        with self._lock:
            return self._last_refine if self._last_refine is not None else self._last_search

    # -- save / load / export ------------------------------------------------------------------

    def _codes_hash(self) -> str:
        return self.catalog.fingerprint

    def save(self, path) -> None:
        """Write :meth:`to_json` to ``path``, atomically."""
        atomic_write_text(path, self.to_json())

    def to_json(self) -> str:
        """The session (catalog path + codes hash, labels, history, current query, suggestion pages,
        RNG state) as JSON text, what :meth:`save` writes. The undo stack and results are not included."""
        with self._lock:
            state = {
                "format": SESSION_FORMAT, "version": SESSION_VERSION,
                "catalog": {"path": str(self.catalog.path), "codes_sha256": self._codes_hash()},
                "labels": {str(i): v for i, v in sorted(self._labels.items())},
                "history": self._history,
                "query": self._query,
                "query_vector": None if self._query_vector is None else self._query_vector[0].tolist(),
                "rng_state": self._rng.bit_generator.state,
                "pages": [page.to_dict() for page in self._pages],
            }
            return json.dumps(state, indent=1)

    @classmethod
    def load(cls, path, catalog) -> "SearchSession":
        """Read a session saved by :meth:`save` into ``catalog``.

        Raises ValueError when the file is not a session, or was saved for a catalog whose codes
        differ from ``catalog``'s (labels and rounds would name other items).
        """
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ValueError(f"no session file at {path}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"session file {path} is not valid JSON: {exc}") from None
        return cls.from_json(text, catalog, source=path)

    @classmethod
    def from_json(cls, text: str, catalog, *, source="the saved session") -> "SearchSession":
        """A session from :meth:`to_json` text (what :meth:`load` reads from a file, and what the app
        keeps in the browser so that a reload finds its marks). ``source`` names it in errors."""
        path = source
        try:
            state = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"session file {path} is not valid JSON: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != SESSION_FORMAT:
            raise ValueError(f"{path} is not a clipbranches session file")
        if state.get("version") not in _READABLE_VERSIONS:
            raise ValueError(f"{path} has session format version {state.get('version')}; this code reads "
                             f"{', '.join(map(str, _READABLE_VERSIONS))}")
        session = cls(catalog)
        try:
            saved = state["catalog"]
            if saved["codes_sha256"] != session._codes_hash():
                raise ValueError(f"session {path} was saved for catalog {saved['path']} (codes sha256 "
                                 f"{saved['codes_sha256'][:12]}...), not for catalog {catalog.path} (codes sha256 "
                                 f"{session._codes_hash()[:12]}...)")
            if not isinstance(state["labels"], dict):
                raise ValueError(f"session file {path}: labels must be an object of item id -> label")
            for key, value in state["labels"].items():
                if not (isinstance(key, str) and key.isascii() and key.isdigit() and key == str(int(key))):
                    raise ValueError(f"session file {path} has a malformed item id {key!r} (ids are written as 7, "
                                     f"not 07 or ' 7')")
                if value not in ("pos", "neg"):
                    raise ValueError(f"session file {path} has an invalid label {value!r} for item {key}")
                session._labels[session.catalog.check_id(int(key))] = value
            if not isinstance(state["history"], list) or not all(isinstance(h, dict) for h in state["history"]):
                raise ValueError(f"session file {path}: history must be a list of round summaries")
            session._history = list(state["history"])
            query = state["query"]
            if query is not None and not (isinstance(query, dict) and query.get("type") in ("text", "image")):
                raise ValueError(f"session file {path}: query must be null or a text/image query, not {query!r}")
            session._query = query
            if state["query_vector"] is not None:
                vector = state["query_vector"]
                if not isinstance(vector, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in vector):
                    raise ValueError(f"session file {path}: query_vector must be a list of numbers")
                session._query_vector = np.asarray(vector, np.float32).reshape(1, -1)
                if not np.isfinite(session._query_vector).all():
                    raise ValueError(f"session file {path}: query_vector holds NaN or infinite values")
                if session._query_vector.shape[1] != catalog.dim:
                    raise ValueError(f"session file {path} has a {session._query_vector.shape[1]}-d query "
                                     f"embedding; the catalog has {catalog.dim} dims")
            rng_state = state["rng_state"]
            if rng_state["bit_generator"] not in _BIT_GENERATORS:
                raise ValueError(f"session file {path} names an unknown random generator {rng_state['bit_generator']!r}")
            bit_generator = getattr(np.random, rng_state["bit_generator"])()
            bit_generator.state = rng_state
            session._pages = [Page.from_dict(p) for p in state.get("pages", [])]
            for page in session._pages:
                for i in page.ids:
                    session.catalog.check_id(int(i))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"session file {path} is incomplete or corrupt: {exc!r}") from None
        session._rng = np.random.Generator(bit_generator)
        return session

    def export(self, path, format: str = "csv") -> None:
        """Write :meth:`export_text` to ``path``, atomically."""
        atomic_write_text(path, self.export_text(format))

    def export_text(self, format: str = "csv") -> str:
        """The last refine result (or the last query's items, if no refine followed it) as text:
        one row per item, best first, with id, source, caption and score.

        format: "csv" (with a header) or "json" (a list of objects). ``source`` is the catalog's
        ``source`` column where it has one, else "".
        """
        if format not in ("csv", "json"):
            raise ValueError(f"format must be 'csv' or 'json'; got {format!r}")
        result = self.last_result
        if result is None:
            raise ValueError("nothing to export: run a search or refine first")
        ids = np.asarray(result.ids, np.int64)
        items = self.catalog.items_of(ids)
        captions = items.column("caption").to_pylist() if "caption" in items.column_names else [""] * len(ids)
        sources = items.column("source").to_pylist() if "source" in items.column_names else [""] * len(ids)
        rows = [{"id": int(i), "source": "" if src is None else str(src), "caption": "" if cap is None else str(cap),
                 "score": float(s)} for i, src, cap, s in zip(ids, sources, captions, result.scores)]
        if format == "json":
            return json.dumps(rows, indent=1)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "source", "caption", "score"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "source": _csv_text(row["source"]), "caption": _csv_text(row["caption"])}
                         for row in rows)
        return buf.getvalue()

    # -- validation ----------------------------------------------------------------------------

    @staticmethod
    def _as_id_list(ids) -> list:
        try:
            if isinstance(ids, (str, bytes)):
                raise TypeError
            return list(ids)
        except TypeError:  # not iterable (a float, None, a 0-d array) or a string
            raise ValueError(f"ids must be an item id or a list of item ids; got {ids!r}") from None
