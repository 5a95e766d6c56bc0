"""What to mark next, and how good the answer is: suggestion pages as probability samples.

A page of suggestions (:meth:`SearchSession.suggest`) serves two purposes at once:

* **learning**: half of it confirms the current answer (items drawn uniformly from the answer), half
  explores outside it, mostly in the query's neighbourhood, where missed positives are dense. A page
  of the model's own top results would only show more of what it already finds ("a star" -> blue
  stars, forever); measured on the demo world, exploring lifts broad concepts' F1 after three rounds
  from 0.22 to 0.8-0.95 (``benchmarks/rounds.py``).
* **measuring**: every item is drawn at random with a known inclusion probability ``pi`` (systematic
  sampling, probability proportional to a design weight), so the marks the user gives a page are an
  unbiased sample of the unmarked catalog. :func:`estimate_quality` turns them into Horvitz-Thompson
  estimates of how many positives the answer holds and how many it misses: an estimate of precision
  and recall that does not rely on the model's own opinion.

Numpy only (no torch, no widgets), so the session, the benchmark and a test use the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: share of a page spent confirming the current answer (the rest explores outside it)
ANSWER_SHARE = 0.5
#: share of the exploring half spread over the whole catalog beyond the query's neighbourhood, so
#: every unmarked item can be drawn and the estimate covers the whole catalog
FAR_SHARE = 0.05
#: the query's neighbourhood explored: its top max(NEIGHBOURHOOD, 4 x answer size) items
NEIGHBOURHOOD = 8000


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
    return int(min(n_items, max(NEIGHBOURHOOD, 4 * answer_size)))


def design_weights(n_items: int, marked: np.ndarray, answer: np.ndarray, neighbourhood: np.ndarray | None,
                   *, answer_share: float = ANSWER_SHARE, far_share: float = FAR_SHARE) -> np.ndarray:
    """Draw weights over the catalog (0 for marked items), summing to 1.

    ``answer_share`` of the mass goes uniformly to unmarked answer items; the rest to unmarked items
    outside the answer: uniformly over the query's ``neighbourhood`` (ids), with ``far_share`` of it
    uniformly over everything else (all of it uniformly when there is no neighbourhood).
    """
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
    while True:
        rest = ~certain & (w > 0)
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
                     held_out: dict[int, bool]) -> dict:
    """Estimated precision and recall of ``answer`` (catalog ids) from the user's marks.

    labels: ``{id: "pos" | "neg"}``. pages: the suggestion pages shown so far. held_out: for marked
    ids, whether a model trained WITHOUT that id puts it in the answer (cross-validation); it stands
    for how the model treats the unmarked items the id represents.

    With suggestion pages, each marked page item represents ``1/pi - 1`` unmarked items like it
    (Horvitz-Thompson; unmarked page items are treated as missing at random), so the positives the
    answer holds and misses among unmarked items are estimated from the pages (averaged over pages),
    and the marked items count exactly. Without pages it falls back to cross-validation on the marks,
    which sees only what the user was shown and is optimistic. Returns ``precision``, ``recall``,
    ``f1`` (in [0, 1]), ``positives`` (estimated in the whole catalog), ``method`` (in words),
    ``n_pages`` and ``n_sampled`` (marked page items used).
    """
    answer = np.asarray(answer, np.int64)
    in_answer = np.zeros(n_items, bool)
    in_answer[answer] = True
    pos = np.fromiter((i for i, v in labels.items() if v == "pos"), np.int64)
    marked = np.fromiter(labels, np.int64)
    pos_in_answer = float(in_answer[pos].sum())
    n_unmarked_in_answer = float(answer.shape[0] - in_answer[marked].sum())

    page_estimates = []  # per page: (unmarked positives in the answer, unmarked positives in all)
    n_sampled = 0
    for page in pages:
        seen = np.array([int(i) in labels for i in page.ids], bool)
        if not seen.any():
            continue
        ids, pi = page.ids[seen], page.pi[seen]
        # missing at random: scale up the marked ones to stand for the whole page
        scale = (1.0 / page.pi).sum() / (1.0 / pi).sum()
        w = scale / pi - 1.0  # other unmarked items each marked one stands for
        y = np.array([labels[int(i)] == "pos" for i in ids], float)
        member = np.array([held_out.get(int(i), in_answer[i]) for i in ids], float)
        page_estimates.append(((w * y * member).sum(), (w * y).sum()))
        n_sampled += int(seen.sum())

    if page_estimates:
        est_in, est_all = np.mean(np.array(page_estimates), axis=0)
        est_in = min(est_in, n_unmarked_in_answer)
        found = pos_in_answer + est_in
        total = pos.shape[0] + est_all
        precision = found / answer.shape[0] if answer.shape[0] else 0.0
        recall = found / total if total > 0 else 0.0
        method = (f"estimate from {n_sampled} marked suggestions drawn at random ({len(page_estimates)} "
                  f"page{'s' if len(page_estimates) != 1 else ''}, Horvitz-Thompson) and your other marks")
        positives = total
    else:
        ho = {i: m for i, m in held_out.items() if i in labels}
        tp = sum(1 for i, m in ho.items() if m and labels[i] == "pos")
        fp = sum(1 for i, m in ho.items() if m and labels[i] == "neg")
        fn = sum(1 for i, m in ho.items() if not m and labels[i] == "pos")
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        method = ("rough: cross-validation on your marks only, which saw just the items you were shown "
                  "(optimistic); mark a page of suggestions for an estimate over the whole catalog")
        positives = None
    precision, recall = float(np.clip(precision, 0, 1)), float(np.clip(recall, 0, 1))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1),
            "positives": None if positives is None else float(positives), "method": method,
            "n_pages": len(page_estimates), "n_sampled": n_sampled}
