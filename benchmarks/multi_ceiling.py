"""How far can ANY classifier on the multi-object catalog's 32-byte codes go? (issue 9's target 0.6)

Trains on the ground truth of half of ``data/demo-multi`` (10,000 labelled items, 50x what a user
marks in three rounds) and scores F1 on the other half, for 16 colour + shape concepts: our linear
model, a 200-tree random forest and 15-nearest neighbours, both at their best threshold (chosen on
the test half: an upper bound). If these stay far below 0.6, the limit is the representation (one
global 32-d code for a scene of 1-3 objects), not the loop.

    .venv/bin/python benchmarks/multi_ceiling.py          # about 2 minutes on 2 cores
Writes benchmarks/results/multi_ceiling.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_demo import machine  # noqa: E402

from clipbranches_widgets.catalog import open_catalog  # noqa: E402
from clipbranches_widgets.demo import all_color_shape_concepts, concept_mask  # noqa: E402
from clipbranches_widgets.engine.linear import LinearCodes  # noqa: E402


def f1(pred, truth) -> float:
    tp = int((pred & truth).sum())
    return 0.0 if tp == 0 else 2 * tp / (int(pred.sum()) + int(truth.sum()))


def main():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neighbors import KNeighborsClassifier

    cat = open_catalog(ROOT / "data" / "demo-multi")
    X = np.asarray(cat.codes)
    rng = np.random.default_rng(0)
    train = rng.random(X.shape[0]) < 0.5
    concepts = all_color_shape_concepts()
    concepts = [concepts[i] for i in sorted(rng.choice(len(concepts), 16, replace=False))]
    thresholds = np.linspace(0.05, 0.95, 19)
    rows = []
    for text in concepts:
        y = concept_mask(cat.items, text)
        test = y[~train]
        lin = LinearCodes(C=10).fit(X[train], y[train])
        rf = RandomForestClassifier(200, min_samples_leaf=3, class_weight="balanced_subsample", n_jobs=2,
                                    random_state=0).fit(X[train], y[train])
        knn = KNeighborsClassifier(15).fit(X[train], y[train])
        p_rf, p_knn = rf.predict_proba(X[~train])[:, 1], knn.predict_proba(X[~train])[:, 1]
        rows.append((text, int(y.sum()), f1(lin.predict(X[~train]), test),
                     max(f1(p_rf > t, test) for t in thresholds), max(f1(p_knn > t, test) for t in thresholds)))
        print(rows[-1], flush=True)
    m = machine()
    lines = ["# The multi-object catalog's ceiling: classifiers trained on 10,000 true labels", "",
             f"Re-run: `.venv/bin/python benchmarks/multi_ceiling.py`. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['date']}, commit {m['commit']}.", "",
             "Half of data/demo-multi (20,000 scenes of 1-3 objects) with ground truth for training, F1 on the "
             "other half. Forest and k-NN at their best threshold on the test half (an upper bound).", "",
             "| concept | members | linear (C=10) | random forest (200 trees) | 15-NN |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {n} | {a:.3f} | {b:.3f} | {c:.3f} |" for t, n, a, b, c in rows]
    med = np.median(np.array([r[2:] for r in rows]), axis=0)
    lines += [f"| **median** | | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} |", ""]
    out = Path(__file__).resolve().parent / "results" / "multi_ceiling.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
