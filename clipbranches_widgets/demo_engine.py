"""Engine demo: ``python -m clipbranches_widgets.demo_engine [--rows N]`` (``make engine-demo``).

Generates a clustered catalog of 8-bit codes, builds the box index, plays one round of a user's
marks (the 60 nearest items to a concept, marked right or wrong by the ground truth, plus 500
random negatives), trains a decision-branch model and an ensemble, answers the WHOLE catalog through
the index, and prints what it found with precision/recall against the truth and a timing breakdown.
(The dashboard replaces this as the main job once the app exists.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .engine import BoxIndex, BranchEnsemble, DecisionBranches, feature_subsets
from .testing.synthetic import clustered_catalog, labelled_task


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    codes, labels = clustered_catalog(args.rows, seed=args.seed)
    print(f"catalog: {args.rows:,} items x 32 B ({codes.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    subsets = feature_subsets(32, {4: 64, 6: 32, 8: 8}, seed=42)
    t = time.perf_counter()
    index = BoxIndex.build(codes, subsets)
    print(f"index: {len(subsets)} feature subsets, {index.nbytes / args.rows:.0f} B/item, built in {time.perf_counter() - t:.1f} s")

    sizes = np.bincount(labels)
    concept = int(np.argsort(sizes)[len(sizes) // 2])  # a mid-sized concept
    ids, y = labelled_task(codes, labels, concept, seed=args.seed)
    truth = labels == concept
    print(f"\nconcept {concept}: {truth.sum():,} true members ({100 * truth.mean():.2f}%); "
          f"marks: {int(y[:60].sum())} right, {int(60 - y[:60].sum())} wrong of 60 shown, + 500 random negatives")
    for name, model in [("decision branches", DecisionBranches(subsets=subsets, random_state=0)),
                        ("branch ensemble (25)", BranchEnsemble(25, subsets=subsets, random_state=0))]:
        t = time.perf_counter()
        model.fit(codes[ids], y)
        train_s = time.perf_counter() - t
        hits = index.search(model)
        found = np.zeros(args.rows, bool)
        found[hits.ids] = True
        tp = int((found & truth).sum())
        print(f"\n{name}: {len(model.boxes)} boxes, trained in {train_s * 1e3:.1f} ms; answered by "
              f"{hits.stats.get('method')} in {hits.stats.get('total_s', float('nan')) * 1e3:.1f} ms")
        print(f"  found {len(hits):,} items: precision {tp / max(1, len(hits)):.3f}, recall {tp / truth.sum():.3f}")
        print(f"  best 10 ids: {hits.ids[:10].tolist()}  (scores {np.round(hits.scores[:3], 3).tolist()} ...)")
        if isinstance(model, DecisionBranches):
            print("  as SQL:\n    " + model.to_sql("items").replace("\n", "\n    "))


if __name__ == "__main__":
    main()
