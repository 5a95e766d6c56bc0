"""Experiment (run by hand, ~1 min): why single-attribute concepts ("a star") get low F1.

Ensemble, round 1 (the 60 shown labelled by truth + 500 random negatives) on the default catalog,
comparing random negatives outside the query's top 2,000 vs top 8,000, and two ways of cleaning
random negatives that look positive. Output: benchmarks/results/negatives_experiment.txt.

    .venv/bin/python benchmarks/negatives_experiment.py | tee benchmarks/results/negatives_experiment.txt
"""
import numpy as np, time
from clipbranches_widgets import open_catalog
from clipbranches_widgets.demo import concept_mask, all_color_shape_concepts
from clipbranches_widgets.engine import BranchEnsemble, DecisionBranches, make_training_set
from clipbranches_widgets.demo.vocab import SHAPES, COLOR_NAMES
cat = open_catalog('data/demo'); codes = np.asarray(cat.codes); idx = cat.box_index()
concepts = [f"a {s}" for s in SHAPES] + [f"a {c} shape" for c in COLOR_NAMES] + all_color_shape_concepts()[::4]
def f1(ids, truth):
    tp = truth[ids].sum(); return 2*tp/(len(ids)+truth.sum())
res = {}
for c in concepts:
    truth = concept_mask(cat.items, c)
    q = cat.query_encoder().encode_texts([c])
    top, _ = cat.nearest().search(q, k=20000); top = top[0]
    shown = top[:60]; pos = shown[truth[shown]]; neg = shown[~truth[shown]]
    out = {}
    for name, excl in [("top2000", top[:2000]), ("top8000", top[:8000])]:
        ts = make_training_set(codes, pos, neg, n_random_negatives=500, exclude_ids=excl, random_state=0)
        m = BranchEnsemble(random_state=0).fit(ts.X, ts.y, sample_weight=ts.sample_weight)
        out[name] = f1(idx.search(m).ids, truth)
        if name == "top2000":
            # cleaning: drop random negatives the first model calls positive, refit
            keep = ~((ts.source == "random") & (m.predict(ts.X) == 1))
            out["n_dropped_clean"] = int((~keep).sum())
            m2 = BranchEnsemble(random_state=0).fit(ts.X[keep], ts.y[keep], sample_weight=ts.sample_weight[keep])
            out["clean"] = f1(idx.search(m2).ids, truth)
        if name == "top2000":
            deq = cat.quantizer.dequantize(codes[ts.ids]); deq /= np.linalg.norm(deq, axis=1, keepdims=True)
            cen = deq[ts.source == "positive"].mean(0); cen /= np.linalg.norm(cen)
            sim = deq @ cen
            thr = np.percentile(sim[ts.source == "positive"], 5)
            keep = ~((ts.source == "random") & (sim >= thr))
            m3 = BranchEnsemble(random_state=0).fit(ts.X[keep], ts.y[keep], sample_weight=ts.sample_weight[keep])
            out["centroid"] = f1(idx.search(m3).ids, truth)
            out["n_dropped_centroid"] = int((~keep).sum())
            out["true_pos_in_random"] = int(truth[ts.ids[ts.source == "random"]].sum())
    res[c] = out
    print(c, {k: round(v, 3) for k, v in out.items()}, flush=True)
for group, sl in [("shape", slice(0, 8)), ("colour", slice(8, 16)), ("colour+shape", slice(16, None))]:
    names = concepts[sl]
    print(group, {k: round(np.mean([res[n][k] for n in names]), 3) for k in ["top2000", "top8000", "clean", "centroid"]})
