"""Suggestion pages as probability samples, and the estimate of an answer's quality built on them."""

import numpy as np
import pytest

from clipbranches_widgets.exploration import (Page, design_weights, estimate_quality, inclusion_probabilities,
                                              systematic_sample)


def test_inclusion_probabilities_sum_to_k_are_capped_and_proportional():
    w = np.array([0.0, 1, 1, 2, 4, 100])
    pi = inclusion_probabilities(w, 3)
    assert pi.sum() == pytest.approx(3) and pi[0] == 0 and pi[5] == 1.0  # the heavy item is certain
    assert pi[3] == pytest.approx(2 * pi[1]) and pi[4] == pytest.approx(4 * pi[1])
    assert inclusion_probabilities(w, 50).tolist() == [0, 1, 1, 1, 1, 1]  # k beyond the drawable items
    assert inclusion_probabilities(np.zeros(4), 2).sum() == 0


def test_systematic_sample_draws_exactly_k_distinct_ids_with_the_given_probabilities():
    rng = np.random.default_rng(0)
    pi = inclusion_probabilities(rng.uniform(0.1, 1.0, 30) * (np.arange(30) % 5 != 0), 8)
    counts = np.zeros(30)
    for _ in range(4000):
        ids = systematic_sample(pi, rng)
        assert ids.shape[0] == 8 and np.unique(ids).shape[0] == 8 and pi[ids].min() > 0
        counts[ids] += 1
    # first-order inclusion frequencies match pi (binomial standard error <= 0.008)
    assert np.abs(counts / 4000 - pi).max() < 0.035


def test_design_weights_split_the_page_between_answer_neighbourhood_and_the_rest():
    n = 1000
    marked = np.arange(0, 20)
    answer = np.arange(10, 110)  # 10 of them marked
    neighbourhood = np.arange(0, 400)
    w = design_weights(n, marked, answer, neighbourhood, answer_share=0.3, far_share=0.05)
    assert w.sum() == pytest.approx(1) and (w[marked] == 0).all()
    assert w[20:110].sum() == pytest.approx(0.3)
    assert w[110:400].sum() == pytest.approx(0.7 * 0.95) and w[400:].sum() == pytest.approx(0.7 * 0.05)
    assert np.ptp(w[20:110]) == 0 and np.ptp(w[110:400]) == 0  # uniform within each part
    w = design_weights(n, marked, np.zeros(0, np.int64), None)  # no answer, no query: uniform
    assert w[20:].min() == w[20:].max() and w.sum() == pytest.approx(1)


def _population(rng, n=20000):
    """A catalog where the truth is known: 2,000 positives, an answer catching most of them."""
    truth = np.zeros(n, bool)
    truth[rng.choice(n, 2000, replace=False)] = True
    near = np.arange(6000)
    truth[near[:1500]] = True  # positives are dense at the top of the query's ranking
    answer = np.flatnonzero((truth & (rng.random(n) < 0.8)) | (~truth & (rng.random(n) < 0.02)))
    return truth, answer, near


def test_estimate_from_marked_pages_is_close_to_the_truth():
    rng = np.random.default_rng(1)
    truth, answer, near = _population(rng)
    tp = truth[answer].sum()
    true_p, true_r = tp / answer.size, tp / truth.sum()
    errors = []
    for rep in range(30):
        labels, pages = {}, []
        for i in near[:60]:  # a first page of the top results, marked
            labels[int(i)] = "pos" if truth[i] else "neg"
        for _ in range(3):
            pi = inclusion_probabilities(design_weights(truth.size, np.fromiter(labels, np.int64), answer, near), 60)
            ids = systematic_sample(pi, rng)
            pages.append(Page(ids, pi[ids]))
            labels.update({int(i): "pos" if truth[i] else "neg" for i in ids})
        in_answer = np.zeros(truth.size, bool)
        in_answer[answer] = True
        held_out = {i: bool(in_answer[i]) for i in labels}  # a model that does not overfit its marks
        est = estimate_quality(truth.size, answer, labels, pages, held_out, neighbourhood=near)
        assert est["n_pages"] == 3 and est["n_sampled"] == 180 and "suggestions drawn at random" in est["method"]
        errors.append((est["precision"] - true_p, est["recall"] - true_r))
    errors = np.array(errors)
    assert np.abs(errors.mean(axis=0)).max() < 0.03  # about unbiased
    assert (np.abs(errors) <= 0.15).all(axis=1).mean() >= 0.8  # 10% of positives sit in the sparse far part


def test_estimate_uses_held_out_membership_not_the_fitted_answer():
    # one page, all its items positive and drawn from outside the answer; the refit model then took
    # them in, but held out they are misses: recall must stay low
    n = 1000
    answer = np.arange(0, 100)
    page_ids = np.arange(500, 510)
    pages = [Page(page_ids, np.full(10, 10 / 900))]
    labels = {int(i): "pos" for i in page_ids}
    refit_answer = np.r_[answer, page_ids]
    naive = estimate_quality(n, refit_answer, labels, pages, {})
    honest = estimate_quality(n, refit_answer, labels, pages, {int(i): False for i in page_ids})
    assert naive["recall"] > 0.9 and honest["recall"] < 0.2


def test_estimate_without_pages_is_rough_cross_validation_and_unmarked_page_items_are_counted():
    labels = {1: "pos", 2: "pos", 3: "pos", 4: "neg"}
    est = estimate_quality(100, np.array([1, 2, 3, 50]), labels, [], {1: True, 2: True, 3: False, 4: False},
                           random_accepted=0.01, n_eligible=100)
    assert est["recall"] == pytest.approx(2 / 3) and est["precision"] == pytest.approx(1 - 1 / 4)
    assert est["method"].startswith("rough") and est["positives"] is None and est["n_pages"] == 0
    est = estimate_quality(100, np.array([1, 2]), {1: "pos", 7: "pos"}, [Page(np.array([7, 8, 9]), np.full(3, 0.1))],
                           {7: False})
    assert est["n_unmarked_suggestions"] == 2 and "left unmarked" in est["method"]


def test_page_round_trips_and_rejects_bad_probabilities():
    page = Page(np.array([3, 5]), np.array([0.5, 1.0]))
    back = Page.from_dict(page.to_dict())
    assert back.ids.tolist() == [3, 5] and back.pi.tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="inclusion probability"):
        Page.from_dict({"ids": [1, 2], "pi": [0.5, 0.0]})


def test_the_explored_neighbourhood_grows_with_the_answer_up_to_a_cap():
    from clipbranches_widgets.exploration import MAX_NEIGHBOURHOOD, NEIGHBOURHOOD, neighbourhood_size

    assert neighbourhood_size(50_000, 100) == NEIGHBOURHOOD
    assert neighbourhood_size(50_000, 5_000) == 20_000
    assert neighbourhood_size(3_000, 5_000) == 3_000
    assert neighbourhood_size(100_000_000, 4_000_000) == MAX_NEIGHBOURHOOD
