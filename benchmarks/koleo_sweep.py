"""Experiment (run by hand, ~4 min on 2 cores): the KoLeo weight of the 32-d head on the demo world.

Same protocol as Table 1 in quality_demo.py (1,000 catalog queries; Recall@k of the full-width
nearest neighbour in the 8-bit 32-d space; zero-shot shape / colour on the catalog), for heads
trained with KoLeo weights 0, 0.1, 0.3, 1 and 3 on 20,000 (image, caption) pairs of the training
world. Output: benchmarks/results/koleo_sweep.{json,md}.

    .venv/bin/python benchmarks/koleo_sweep.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_demo import KS, nn_ranks, unit, zero_shot  # noqa: E402

from clipbranches_widgets import open_catalog  # noqa: E402
from clipbranches_widgets.build import caption_pairs, embed_world, fit_quantizer, fit_reducer  # noqa: E402
from clipbranches_widgets.demo import COLOR_NAMES, SHAPES, ShapesWorld  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WEIGHTS = [0.0, 0.1, 0.3, 1.0, 3.0]


def main() -> None:
    cat = open_catalog(Path(__file__).resolve().parents[1] / "data" / "demo")
    enc = cat.query_encoder().encoder
    feats = embed_world(enc, cat.demo_world, cat.n_items)
    img_pairs, txt_pairs = caption_pairs(enc, ShapesWorld(seed=1), 20_000, random_state=0)
    objs = cat.items.column("objects").to_pylist()
    shape_truth = np.array([SHAPES.index(o[0]["shape"]) for o in objs])
    color_truth = np.array([COLOR_NAMES.index(o[0]["color"]) for o in objs])
    shape_txt = enc.encode_texts([f"a {s}" for s in SHAPES])
    color_txt = enc.encode_texts([f"a {c} shape" for c in COLOR_NAMES])
    queries = np.random.default_rng(0).choice(cat.n_items, 1000, replace=False)
    quant = fit_quantizer("global", None)
    rows = [{"koleo_weight": "full width (64-d)", "recall_8bit": {str(k): 1.0 for k in KS},
             "zero_shot": {"shape": zero_shot(feats, shape_txt, shape_truth),
                           "colour": zero_shot(feats, color_txt, color_truth)}}]
    for w in WEIGHTS:
        red = fit_reducer("head-koleo" if w else "head", img_pairs, txt_pairs, koleo_weight=w,
                          epochs=20, random_state=0, progress=False)
        zq = unit(quant.dequantize(quant.quantize(red.embed_images(feats))))
        ranks = nn_ranks(feats, zq, queries)
        rows.append({"koleo_weight": w, "recall_8bit": {str(k): float((ranks < k).mean()) for k in KS},
                     "zero_shot": {"shape": zero_shot(zq, red.embed_texts(shape_txt), shape_truth),
                                   "colour": zero_shot(zq, red.embed_texts(color_txt), color_truth)}})
        print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "koleo_sweep.json").write_text(json.dumps(rows, indent=1))
    lines = ["# KoLeo weight sweep (demo world, 8-bit 32-d head)", "",
             "`.venv/bin/python benchmarks/koleo_sweep.py`; protocol as Table 1 in quality_demo.md.", "",
             "| KoLeo weight | R@1 | R@10 | R@100 | zero-shot shape | zero-shot colour |", "|---|---|---|---|---|---|"]
    for r in rows:
        rc, z = r["recall_8bit"], r["zero_shot"]
        lines.append(f"| {r['koleo_weight']} | {rc['1']:.3f} | {rc['10']:.3f} | {rc['100']:.3f} | "
                     f"{z['shape']:.3f} | {z['colour']:.3f} |")
    (RESULTS / "koleo_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
