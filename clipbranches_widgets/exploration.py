"""What to mark next, and how good the answer is: suggestion pages as probability samples.

A page of suggestions (:meth:`SearchSession.suggest`) serves two purposes at once:

* **learning**: 30% of it confirms the current answer (items drawn uniformly from the answer), 70%
  explores outside it, mostly in the query's neighbourhood, where missed positives are dense. A page
  of the model's own top results would only show more of what it already finds ("a star" -> blue
  stars, forever); measured on the demo world (``benchmarks/rounds.py``), exploring lifts the median
  F1 of 32 broad concepts after three rounds from 0.24 to 0.89 (automatic model) / 0.85 (ensemble).
* **measuring**: every item is drawn at random with a known inclusion probability ``pi`` (systematic
  sampling, probability proportional to a design weight), so the marks the user gives a page are a
  random sample of the unmarked catalog. :func:`estimate_quality` turns them into estimates of how
  many positives the answer holds and how many it misses: precision and recall that do not rely on
  the model's own opinion.

Numpy only (no torch, no widgets), so the session, the benchmark and a test use the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: share of a page spent confirming the current answer (the rest explores outside it); measured
#: on the demo world (benchmarks/rounds.py, broad concepts, round 3): 0.3 -> median F1 0.91, 0.5 -> 0.87, 0.2 -> 0.90
ANSWER_SHARE = 0.3
#: share of the exploring part spread over the whole catalog beyond the query's neighbourhood, so
#: every unmarked item can be drawn and the estimate covers the whole catalog
FAR_SHARE = 0.05
#: the query's neighbourhood explored: its top max(NEIGHBOURHOOD, 4 x answer size) items, at most
#: MAX_NEIGHBOURHOOD (a 4M-row answer in a 100M catalog asked for 16M neighbours: 7.8 GiB, 0.6 s)
NEIGHBOURHOOD = 8000
MAX_NEIGHBOURHOOD = 1_000_000


@dataclass
class Page:
    """One page of suggestions: catalog ``ids`` and the probability ``pi`` each had of being drawn."""

    ids: np.ndarray
    pi: np.ndarray

    def to_dict(self) -> dict:
        return {"ids": [int(i) for i in self.ids], "pi": [float(p) for p in self.pi]}

    @classmethod
    def from_dict(cls, d: dict) -> "Page":
        ids, pi = np.asarray(d["ids"], np.int64), np.asarray(d["pi"], np.float64)
        if ids.shape != pi.shape or ((pi <= 0) | (pi > 1)).any():
            raise ValueError("a suggestion page needs one inclusion probability in (0, 1] per id")
        return cls(ids, pi)


def neighbourhood_size(n_items: int, answer_size: int) -> int:
    """How many of the query's nearest items the suggestions explore (see NEIGHBOURHOOD)."""
    return int(min(n_items, MAX_NEIGHBOURHOOD, max(NEIGHBOURHOOD, 4 * answer_size)))


def design_weights(n_items: int, marked: np.ndarray, answer: np.ndarray, neighbourhood: np.ndarray | None,
                   *, answer_share: float | None = None, far_share: float | None = None) -> np.ndarray:
    """Draw weights over the catalog (0 for marked items), summing to 1.

    ``answer_share`` of the mass goes uniformly to unmarked answer items; the rest to unmarked items
    outside the answer: uniformly over the query's ``neighbourhood`` (ids), with ``far_share`` of it
    uniformly over everything else (all of it uniformly when there is no neighbourhood). Defaults:
    the module's ANSWER_SHARE and FAR_SHARE.
    """
    answer_share = ANSWER_SHARE if answer_share is None else answer_share
    far_share = FAR_SHARE if far_share is None else far_share
    free = np.ones(n_items, bool)
    free[marked] = False
    in_answer = np.zeros(n_items, bool)
    in_answer[answer] = True
    w = np.zeros(n_items)
    inside = free & in_answer
    outside = free & ~in_answer
    near = np.zeros(n_items, bool)
    if neighbourhood is not None:
        near[neighbourhood] = True
    near &= outside
    far = outside & ~near
    groups = [(inside, answer_share), (near, (1 - answer_share) * (1 - far_share)),
              (far, (1 - answer_share) * far_share)]
    if not near.any():  # no query: explore the whole outside uniformly
        groups = [(inside, answer_share), (outside, 1 - answer_share)]
    for mask, mass in groups:
        count = int(mask.sum())
        if count:
            w[mask] = mass / count
    total = w.sum()
    return w / total if total > 0 else w


def inclusion_probabilities(weights: np.ndarray, k: int) -> np.ndarray:
    """``pi_i = min(1, c * w_i)`` with ``sum(pi) = k``: probability-proportional-to-weight inclusion
    probabilities, capped at 1 (items that would exceed 1 are taken for certain)."""
    w = np.asarray(weights, np.float64)
    k = min(int(k), int((w > 0).sum()))
    pi = np.zeros_like(w)
    if k <= 0:
        return pi
    certain = np.zeros(w.shape, bool)
    c = 0.0
    while True:
        rest = ~certain & (w > 0)
        if not rest.any():
            break
        c = (k - certain.sum()) / w[rest].sum()
        newly = rest & (c * w >= 1.0)
        if not newly.any():
            break
        certain |= newly
    pi[certain] = 1.0
    rest = ~certain & (w > 0)
    pi[rest] = c * w[rest]
    return pi


def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(sum(pi))`` distinct ids, id ``i`` drawn with probability ``pi[i]``
    (systematic sampling over a random order, which keeps every first-order probability exact)."""
    order = rng.permutation(np.flatnonzero(pi > 0))
    if order.size == 0:
        return np.zeros(0, np.int64)
    cum = np.cumsum(pi[order])
    k = int(round(cum[-1]))
    points = rng.random() + np.arange(k)
    picks = np.minimum(np.searchsorted(cum, points, side="right"), order.size - 1)
    return order[np.unique(picks)].astype(np.int64)


def estimate_quality(n_items: int, answer: np.ndarray, labels: dict[int, str], pages: list[Page],
                     held_out: dict[int, bool], *, neighbourhood: np.ndarray | None = None,
                     random_accepted: float | None = None, n_eligible: int = 0) -> dict:
    """Estimated precision and recall of ``answer`` (catalog ids) from the user's marks.

    labels: ``{id: "pos" | "neg"}``. pages: the suggestion pages shown so far. held_out: for marked
    ids, whether a model trained WITHOUT that id puts it in the answer (cross-validation); it stands
    for how the model treats the unmarked items the id represents. neighbourhood: the current
    query's neighbourhood (ids), as :meth:`SearchSession.suggest` explores it. random_accepted: the
    share of the random negatives that held-out models accepted, and n_eligible: how many catalog
    rows they were drawn from (used only without pages).

    With suggestion pages the unmarked catalog is split into three strata: the answer, the rest of
    the neighbourhood, everything else. In each, the share of positives is estimated from the marked
    page items that fall in it (each weighted by 1/pi within its page: a ratio, Hajek, estimator,
    which stays within the stratum's size), and scaled to the stratum's unmarked size; marked items
    count exactly. Unmarked page items are treated as missing at random, so mark a page whole
    (marking only its positives makes the answer look worse than it is). Without pages it falls back
    to cross-validation: recall from the held-out marked positives; precision assumes the random
    negatives (a uniform sample of the catalog beyond the query's neighbourhood) are all negative, so
    the answer holds about ``random_accepted * n_eligible`` false positives from there, plus the
    held-out marked negatives it accepts: rough, it sees little of the catalog.

    Returns ``precision``, ``recall``, ``f1`` (in [0, 1]), ``positives`` (estimated in the whole
    catalog, None without pages), ``method`` (in words), ``n_pages``, ``n_sampled`` (marked page
    items used) and ``n_unmarked_suggestions`` (page items left unmarked).
    """
    answer = np.asarray(answer, np.int64)
    stratum = np.full(n_items, 2, np.int8)  # 0 answer, 1 rest of the neighbourhood, 2 the rest
    if neighbourhood is not None:
        stratum[np.asarray(neighbourhood, np.int64)] = 1
    stratum[answer] = 0
    marked = np.fromiter(labels, np.int64, count=len(labels))
    y_marked = np.fromiter((v == "pos" for v in labels.values()), bool, count=len(labels))
    unmarked_size = np.bincount(stratum, minlength=3).astype(np.float64) - np.bincount(stratum[marked], minlength=3)
    pos_in_answer = float((y_marked & (stratum[marked] == 0)).sum())

    hits, draws = np.zeros(3), np.zeros(3)  # per stratum: weighted positives, weighted draws
    n_sampled = n_unmarked = n_pages = 0
    for page in pages:
        seen = np.fromiter((int(i) in labels for i in page.ids), bool, count=page.ids.shape[0])
        n_unmarked += int((~seen).sum())
        if not seen.any():
            continue
        n_pages += 1
        ids, pi = page.ids[seen], page.pi[seen]
        y = np.fromiter((labels[int(i)] == "pos" for i in ids), float, count=ids.shape[0])
        # the stratum each item would be in had it not been marked (held-out answer membership)
        s = stratum[ids].copy()
        member = np.fromiter((held_out.get(int(i), s[k] == 0) for k, i in enumerate(ids)), bool, count=ids.shape[0])
        s[member] = 0
        s[~member & (s == 0)] = 1 if neighbourhood is not None else 2
        for h in range(3):
            inh = s == h
            if inh.any():
                w = (1.0 / pi[inh]) / (1.0 / pi[inh]).sum() * inh.sum()  # sums to the page's draws in h
                hits[h] += (w * y[inh]).sum()
                draws[h] += inh.sum()
        n_sampled += int(seen.sum())

    if n_pages:
        rate = np.divide(hits, draws, out=np.zeros(3), where=draws > 0)
        est = rate * unmarked_size
        found = pos_in_answer + est[0]
        total = float(y_marked.sum()) + est.sum()
        precision = found / answer.shape[0] if answer.shape[0] else 0.0
        recall = found / total if total > 0 else 0.0
        method = (f"estimate from {n_sampled} marked suggestions drawn at random ({n_pages} "
                  f"page{'s' if n_pages != 1 else ''}: the share of positives in and around the answer, "
                  f"scaled to the catalog) and your other marks")
        positives = total
    else:
        ho = {i: m for i, m in held_out.items() if i in labels}
        tp = sum(1 for i, m in ho.items() if m and labels[i] == "pos")
        fp = sum(1 for i, m in ho.items() if m and labels[i] == "neg")
        fn = sum(1 for i, m in ho.items() if not m and labels[i] == "pos")
        recall = tp / (tp + fn) if tp + fn else 0.0
        false_pos = fp + (random_accepted or 0.0) * n_eligible
        precision = 1.0 - false_pos / answer.shape[0] if answer.shape[0] else 0.0
        method = ("rough: cross-validation on your marks and the random negatives, which see little of "
                  "the catalog; mark a page of suggestions for an estimate over the whole catalog")
        positives = None
    if n_unmarked:
        method += f"; {n_unmarked} suggested item(s) left unmarked count as missing at random"
    precision, recall = float(np.clip(precision, 0, 1)), float(np.clip(recall, 0, 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1),
            "positives": None if positives is None else float(positives), "method": method,
            "n_pages": n_pages, "n_sampled": n_sampled, "n_unmarked_suggestions": n_unmarked}
