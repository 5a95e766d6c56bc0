"""Why the automatic choice can be wrong in round 1: what cross-validation on the first page sees.

A simulated user marks the text search's first 60 results by the demo world's truth and refines. For
each concept: each family's F1 estimated by cross-validation on those marks (what ``refine("auto")``
decides on) next to its true F1 over the whole catalog.

    .venv/bin/python benchmarks/round1_choice.py
Writes benchmarks/results/round1_choice.{json,md}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_demo import machine  # noqa: E402
from rounds import K, RESULTS, truth_scores  # noqa: E402

from clipbranches_widgets.catalog import open_catalog  # noqa: E402
from clipbranches_widgets.demo import concept_mask  # noqa: E402
from clipbranches_widgets.session import SearchSession  # noqa: E402

CONCEPTS = ("a star", "a yellow shape", "a large triangle", "a small square", "a red star", "a blue circle")
FAMILIES = ("ensemble", "linear")


def first_round(cat, text: str, seed: int = 0) -> dict:
    truth = concept_mask(cat.items, text)
    session = SearchSession(cat, random_state=seed)
    shown = session.text_search(text, k=K).ids
    session.label([int(i) for i in shown if truth[i]], "pos")
    session.label([int(i) for i in shown if not truth[i]], "neg")
    auto = session.refine("auto", random_state=seed + 1)
    row = {"positives": len(session.positives), "chosen": auto.model_name}
    for family in FAMILIES:
        row[f"{family}_cv_f1"] = auto.selection[family]["f1"]
        row[f"{family}_true_f1"] = truth_scores(session.refine(family, random_state=seed + 1).ids, truth)["f1"]
    return row


def main():
    cat = open_catalog(ROOT / "data" / "demo")
    rows = {text: first_round(cat, text) for text in CONCEPTS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "round1_choice.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    lines = ["# Round 1: what cross-validation on the first page sees", "",
             "Re-run: `.venv/bin/python benchmarks/round1_choice.py`. The first 60 text-search results marked by "
             "truth, then `refine('auto')`: each family's F1 estimated on those marks vs its true F1 over the "
             "whole catalog.", "",
             "| concept | positives marked | chosen | ensemble: estimated / true F1 | linear: estimated / true F1 |",
             "|---|---|---|---|---|"]
    for text, r in rows.items():
        lines.append(f"| {text} | {r['positives']} | {r['chosen']} | {r['ensemble_cv_f1']:.2f} / "
                     f"{r['ensemble_true_f1']:.2f} | {r['linear_cv_f1']:.2f} / {r['linear_true_f1']:.2f} |")
    lines += ["", "The first page of a broad query holds one kind of its members (all 60 results for 'a star' are "
              "blue stars). Every family fits that kind, and the box ensemble fits it tightest, so it wins "
              "cross-validation on the marks while the linear model's wider region finds more of the concept on "
              "the catalog. No estimate computed on those marks alone can see it; the first marked suggestion "
              "page (round 2 on) does."]
    (RESULTS / "round1_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
