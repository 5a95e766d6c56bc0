"""Measured quality of the demo world: reducers, text search, fine-tuning, Figure 3 on demo concepts.

Protocol: the demo world's recipe (a prototype's numbers) and the issue's quality targets.

1. Table 1 (paper): with the catalog's own encoder, full-width image features of the catalog
   world, (image, caption) pairs of the training world ShapesWorld(seed=1); reducers to 32-d:
   PCA (fit on catalog images), head (KoLeo 0), head + KoLeo (0.1). Recall@1/10/100 of the true
   full-width nearest neighbour of 1,000 random catalog images, float and 8-bit (global map),
   plus zero-shot shape / colour accuracy on the 1-object catalog.
2. Text search precision@60 through ``Catalog.search_text`` on the stored codes, per concept type.
3. Fine-tuning F1 through ``SearchSession``: label the top 60 by ground truth, refine with 500
   random negatives (outside the query's top 2,000), F1 over the whole catalog; round 2 adds the
   first 60 unlabelled refine results, labelled by ground truth.
4. Figure 3 on demo concepts: ``figure3_digits.run`` on the catalog codes with class = colour+shape.

    .venv/bin/python benchmarks/quality_demo.py                       # data/demo, ~20 min on 2 cores
    .venv/bin/python benchmarks/quality_demo.py --catalog /tmp/qdev --quick --out /tmp/qdev-quality
Writes benchmarks/results/quality_demo.{json,md} and benchmarks/results/quality_*.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figure3_digits import METHODS, PS, f1, first_win, run  # noqa: E402

from clipbranches_widgets.build import caption_pairs, embed_world, fit_quantizer, fit_reducer  # noqa: E402
from clipbranches_widgets.catalog import open_catalog  # noqa: E402
from clipbranches_widgets.demo import (COLOR_NAMES, SHAPES, SIZES, ShapesWorld,  # noqa: E402
                                       all_color_shape_concepts, concept_mask, world_of)
from clipbranches_widgets.session import SearchSession  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NN_NAME = "nearest neighbours (k = true size)"
SESSION_MODELS = ("branches", "ensemble", "tree", "forest")
FIG3_METHODS = {"branches": METHODS["branches"], "ensemble": METHODS["ensemble"],
                "tree": METHODS["sklearn tree"], "forest": METHODS["sklearn forest (25)"]}
PAPER_RECALL = {"pca": (0.683, 0.757, 0.802), "head": (0.831, 0.890, 0.926),
                "head-koleo": (0.953, 0.970, 0.985)}
KS = (1, 10, 100)


def tqdm(*a, **kw):
    from tqdm.auto import tqdm as _t

    return _t(*a, **kw)


def repo_path(path) -> str:
    """``path`` relative to the repository when it lies inside it (reports never hold machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit}


def concept_sets(quick: bool) -> dict[str, list[str]]:
    """Concept queries per type (fixed samples, seed 0)."""
    rng = np.random.default_rng(0)
    scs = [f"a {s} {c} {sh}" for s in SIZES for c in COLOR_NAMES for sh in SHAPES]
    sets = {
        "colour+shape": all_color_shape_concepts(),
        "shape": [f"a {s}" for s in SHAPES],
        "colour": [f"a {c} shape" for c in COLOR_NAMES],
        "size+shape": [f"a {s} {sh}" for s in SIZES for sh in SHAPES],
        "size+colour+shape": [scs[i] for i in sorted(rng.choice(len(scs), 16, replace=False))],
        "background": ["a plain background", "a striped background", "a gradient background",
                       "a noisy background"],
    }
    if quick:  # fixed samples: 8 colour+shape concepts, 2 of every other type
        sets = {k: [v[i] for i in sorted(rng.choice(len(v), 8 if k == "colour+shape" else 2, replace=False))]
                for k, v in sets.items()}
    return sets


# -- 1. Table 1 ---------------------------------------------------------------------------------

def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nn_ranks(full, reduced, queries, chunk=250):
    """Rank (0 = first) in ``reduced`` cosine space of each query's true full-width nearest neighbour
    (the query itself excluded in both spaces; ties counted against us: items scoring >= the NN)."""
    ranks = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), chunk):
        q = queries[s:s + chunk]
        rows = np.arange(len(q))
        sim_full = full[q] @ full.T
        sim_full[rows, q] = -np.inf
        nn = sim_full.argmax(axis=1)
        sim_red = reduced[q] @ reduced.T
        sim_red[rows, q] = -np.inf
        target = sim_red[rows, nn]
        ranks[s:s + chunk] = (sim_red >= target[:, None]).sum(axis=1) - 1
    return ranks


def zero_shot(image_vecs, text_vecs, truth) -> float:
    return float(((image_vecs @ text_vecs.T).argmax(axis=1) == truth).mean())


def table1(cat, args, timings) -> dict:
    enc = cat.query_encoder().encoder
    world = world_of(cat)
    n = cat.n_items
    t = time.perf_counter()
    feats = embed_world(enc, world, n, n_jobs=args.jobs)
    timings["table1_embed_catalog_s"] = time.perf_counter() - t
    t = time.perf_counter()
    img_pairs, txt_pairs = caption_pairs(enc, ShapesWorld(seed=1, objects_per_image=world.objects_per_image),
                                         args.pairs, random_state=0, n_jobs=args.jobs)
    timings["table1_caption_pairs_s"] = time.perf_counter() - t

    objs = cat.items.column("objects").to_pylist()
    has_one = np.array([len(o) == 1 for o in objs])
    shape_truth = np.array([SHAPES.index(o[0]["shape"]) if o else -1 for o in objs])
    color_truth = np.array([COLOR_NAMES.index(o[0]["color"]) if o else -1 for o in objs])
    shape_txt = enc.encode_texts([f"a {s}" for s in SHAPES])
    color_txt = enc.encode_texts([f"a {c} shape" for c in COLOR_NAMES])

    def zs(img, to_text):
        return {"shape": zero_shot(img[has_one], to_text(shape_txt), shape_truth[has_one]),
                "colour": zero_shot(img[has_one], to_text(color_txt), color_truth[has_one])}

    queries = np.random.default_rng(0).choice(n, min(args.recall_queries, n), replace=False)
    t_red = time.perf_counter()
    quant = fit_quantizer("global", None)
    out = {"n_items": n, "n_pairs": args.pairs, "n_queries": len(queries), "n_one_object": int(has_one.sum()),
           "full_width": {"dim": int(feats.shape[1]), "zero_shot": zs(feats, lambda x: x)}, "reducers": {}}

    variants = [("pca", "PCA"), ("head", "head"), ("head-koleo", "head + KoLeo"), ("catalog", "catalog's stored codes")]
    for kind, _ in tqdm(variants, desc="table 1: reducers"):
        t = time.perf_counter()
        if kind == "catalog":
            red = cat.query_encoder().reducer
            z = red.embed_images(feats)
            zq = unit(cat.quantizer.dequantize(np.asarray(cat.codes)))
            fit_s = 0.0
        else:
            if kind == "pca":
                red = fit_reducer("pca", feats)
            else:
                red = fit_reducer(kind, img_pairs, txt_pairs, koleo_weight=0.1, epochs=args.head_epochs,
                                  random_state=0, progress=False)
            fit_s = time.perf_counter() - t
            z = red.embed_images(feats)
            zq = unit(quant.dequantize(quant.quantize(z)))
        rf, rq = nn_ranks(feats, z, queries), nn_ranks(feats, zq, queries)
        out["reducers"][kind] = {
            "kind": getattr(red, "kind", kind), "fit_s": fit_s,
            "recall_float": {str(k): float((rf < k).mean()) for k in KS},
            "recall_8bit": {str(k): float((rq < k).mean()) for k in KS},
            "zero_shot_float": zs(z, red.embed_texts),
            "zero_shot_8bit": zs(zq, red.embed_texts)}
    timings["table1_reducers_s"] = time.perf_counter() - t_red
    r = out["reducers"]
    full_zs = out["full_width"]["zero_shot"]
    kz = r["head-koleo"]["zero_shot_8bit"]
    out["targets"] = {
        "ordering PCA < head < head+KoLeo (8-bit R@10)":
            bool(r["pca"]["recall_8bit"]["10"] < r["head"]["recall_8bit"]["10"] < r["head-koleo"]["recall_8bit"]["10"]),
        "head+KoLeo 8-bit R@10 >= 0.97": bool(r["head-koleo"]["recall_8bit"]["10"] >= 0.97),
        "head+KoLeo 8-bit zero-shot within 0.05 of full width":
            bool(all(full_zs[a] - kz[a] <= 0.05 for a in ("shape", "colour"))),
    }
    return out


# -- 2. text search ----------------------------------------------------------------------------

def text_search_p60(cat, sets, truths) -> dict:
    out = {}
    for kind, texts in tqdm(list(sets.items()), desc="text search P@60"):
        vals = {}
        for text in texts:
            ids, _ = cat.search_text(text, k=60)
            vals[text] = float(truths[text][ids].mean())
        out[kind] = {"mean": float(np.mean(list(vals.values()))), "min": float(min(vals.values())),
                     "prevalence": float(np.mean([truths[t].mean() for t in texts])), "per_concept": vals}
    return out


# -- 3. fine-tuning ----------------------------------------------------------------------------

def f1_ids(ids, truth) -> float:
    pred = np.zeros(len(truth), bool)
    pred[np.asarray(ids, np.int64)] = True
    return f1(pred, truth)


def finetune(cat, sets, truths, models, timings) -> dict:
    cat.box_index()  # built once (kept under the catalog's index/), not counted in the refine times
    per = {m: {kind: {"round1": {}, "round2": {}} for kind in sets} for m in models}
    secs = {m: [] for m in models}
    jobs = [(kind, text) for kind, texts in sets.items() for text in texts]
    for kind, text in tqdm(jobs, desc="fine-tuning (SearchSession)"):
        truth = truths[text]
        for m in models:
            s = SearchSession(cat, random_state=0)
            shown = s.text_search(text, k=60).ids
            s.label([int(i) for i in shown if truth[i]], "pos")
            s.label([int(i) for i in shown if not truth[i]], "neg")
            if not s.positives:
                per[m][kind]["round1"][text] = per[m][kind]["round2"][text] = 0.0
                continue
            t = time.perf_counter()
            r1 = s.refine(m, n_random_negatives=500, random_state=1)
            secs[m].append(time.perf_counter() - t)
            per[m][kind]["round1"][text] = f1_ids(r1.ids, truth)
            labelled = s.labels
            new = [int(i) for i in r1.ids if int(i) not in labelled][:60]
            s.label([i for i in new if truth[i]], "pos")
            s.label([i for i in new if not truth[i]], "neg")
            t = time.perf_counter()
            r2 = s.refine(m, n_random_negatives=500, random_state=2)
            secs[m].append(time.perf_counter() - t)
            per[m][kind]["round2"][text] = f1_ids(r2.ids, truth)
    out = {"models": {}, "refine_s_mean": {m: float(np.mean(v)) if v else None for m, v in secs.items()}}
    for m in models:
        out["models"][m] = {kind: {rnd: {"mean": float(np.mean(list(v.values()))), "per_concept": v}
                                   for rnd, v in d.items()} for kind, d in per[m].items()}
    ens = out["models"].get("ensemble", {}).get("colour+shape")
    if ens:
        out["targets"] = {"ensemble round-1 F1 >= 0.85 on colour+shape": bool(ens["round1"]["mean"] >= 0.85)}
    return out


# -- 4. Figure 3 -------------------------------------------------------------------------------

class ClassSubset(np.ndarray):
    """Labels whose ``np.unique`` lists only chosen classes, so that figure3_digits.run evaluates
    those classes (on the whole catalog: other rows stay as negatives and in the F1)."""

    def __array_function__(self, func, types, args, kwargs):
        if func is np.unique and getattr(self, "classes", None) is not None:
            return np.array(self.classes)
        return super().__array_function__(func, types, args, kwargs)

    def __array_finalize__(self, obj):
        self.classes = None  # derived arrays (labels == c, ...) are plain label arrays


def figure3(cat, concepts, reps, timings) -> dict:
    objs = cat.items.column("objects").to_pylist()
    cs = all_color_shape_concepts()
    index = {(c, s): i for i, (c, s) in enumerate((c, s) for c in COLOR_NAMES for s in SHAPES)}
    labels = np.array([index[(o[0]["color"], o[0]["shape"])] if len(o) == 1 else -1 for o in objs])
    keep = labels >= 0  # 1-object items only (others, if any, are left out)
    codes = np.ascontiguousarray(np.asarray(cat.codes)[keep])
    lab = labels[keep].view(ClassSubset)
    lab.classes = sorted(cs.index(c) for c in concepts)
    t = time.perf_counter()
    curves = run(codes, lab, FIG3_METHODS, ps=PS, reps=reps)
    timings["figure3_s"] = time.perf_counter() - t
    base = curves[NN_NAME]
    wins = {m: first_win(c, base) for m, c in curves.items() if m != NN_NAME}
    return {"ps": PS, "reps": reps, "concepts": list(concepts), "n_rows": int(keep.sum()), "f1": curves,
            "first_p_beating_nn": wins,
            "targets": {"branches first beats NN at p <= 22": wins["branches"] is not None and wins["branches"] <= 22,
                        "ensemble first beats NN at p <= 8": wins["ensemble"] is not None and wins["ensemble"] <= 8}}


# -- report ------------------------------------------------------------------------------------

def plots(res, stem: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    ts = res.get("text_search")
    if ts:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 2.2]})
        kinds = list(ts)
        a1.bar(kinds, [ts[k]["mean"] for k in kinds], color="tab:blue", label="P@60")
        a1.scatter(kinds, [ts[k]["prevalence"] for k in kinds], color="k", marker="_", s=200, label="prevalence")
        a1.set_ylim(0, 1.05)
        a1.set_ylabel("mean precision@60")
        a1.tick_params(axis="x", rotation=35)
        a1.legend(fontsize=7)
        a1.set_title("text search, per concept type")
        pc = ts["colour+shape"]["per_concept"]
        a2.bar(range(len(pc)), list(pc.values()), color="tab:blue")
        a2.axhline(0.9, color="r", lw=0.8, ls="--")
        a2.set_xticks(range(len(pc)), [t[2:] for t in pc], rotation=90, fontsize=5)
        a2.set_ylim(0, 1.05)
        a2.set_title("colour+shape concepts")
        fig.tight_layout()
        files["text_search"] = stem.parent / f"{stem.name}_text_search.png"
        fig.savefig(files["text_search"], dpi=120)
        plt.close(fig)
    ft = res.get("finetune")
    if ft:
        models = list(ft["models"])
        kinds = list(ft["models"][models[0]])
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        w = 0.8 / len(models)
        for ax, rnd in zip(axes, ("round1", "round2")):
            for i, m in enumerate(models):
                ax.bar(np.arange(len(kinds)) + i * w, [ft["models"][m][k][rnd]["mean"] for k in kinds], w, label=m)
            ax.set_xticks(np.arange(len(kinds)) + 0.4 - w / 2, kinds, rotation=30)
            ax.axhline(0.85, color="r", lw=0.8, ls="--")
            ax.set_title(f"fine-tuning F1, {rnd.replace('round', 'round ')}")
            ax.set_ylim(0, 1.05)
        axes[0].set_ylabel("mean F1 over the catalog")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        files["finetune"] = stem.parent / f"{stem.name}_finetune.png"
        fig.savefig(files["finetune"], dpi=120)
        plt.close(fig)
    f3 = res.get("figure3")
    if f3:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for m, c in f3["f1"].items():
            ax.plot(f3["ps"], c, marker="o", label=m, linestyle="--" if m == NN_NAME else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(f3["ps"], [str(p) for p in f3["ps"]])
        ax.set_xlabel("labelled positives (plus 500 random negatives)")
        ax.set_ylabel("mean F1 over the catalog")
        ax.set_title(f"Demo world: F1 vs positives ({len(f3['concepts'])} colour+shape concepts x {f3['reps']} draws)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files["figure3"] = stem.parent / f"{stem.name}_figure3.png"
        fig.savefig(files["figure3"], dpi=120)
        plt.close(fig)
    return {k: str(v) for k, v in files.items()}


def yes(b) -> str:
    return "**met**" if b else "**not met**"


def markdown(res, stem: Path) -> str:
    m = res["machine"]
    L = [f"# Demo-world quality report ({res['catalog']})", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; {m['date']}; commit {m['commit']}. "
         f"Total time {res['seconds']:.0f} s{' (--quick)' if res['quick'] else ''}.", "",
         f"Re-run: `{res['command']}`. Catalog: {res['n_items']:,} items; encoder {res['encoder']}.", ""]
    t1 = res.get("table1")
    if t1:
        L += ["## 1. Table 1: reducers to 32-d", "",
              f"Recall@k of the true full-width ({t1['full_width']['dim']}-d) nearest neighbour of {t1['n_queries']:,} random "
              f"catalog images (itself excluded) among the 32-d cosine neighbours; heads trained on {t1['n_pairs']:,} "
              "(image, caption) pairs of ShapesWorld(seed=1); 8-bit = the global map, dequantized. Zero-shot: argmax over "
              f"8 prompts (\"a star\", \"a red shape\") on the {t1['n_one_object']:,} 1-object catalog images.", "",
              "| features | R@1 | R@10 | R@100 | R@1 8-bit | R@10 8-bit | R@100 8-bit | paper R@1/10/100 | zero-shot shape (8-bit) | zero-shot colour (8-bit) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        zs = t1["full_width"]["zero_shot"]
        L.append(f"| full width ({t1['full_width']['dim']}-d) | 1 | 1 | 1 | - | - | - | - | {zs['shape']:.3f} | {zs['colour']:.3f} |")
        for kind, r in t1["reducers"].items():
            name = {"pca": "PCA", "head": "head", "head-koleo": "head + KoLeo"}.get(kind, f"catalog's stored codes ({r['kind']})")
            paper = "/".join(f"{v:.3f}" for v in PAPER_RECALL[kind]) if kind in PAPER_RECALL else "-"
            rf, rq, zf, zq = r["recall_float"], r["recall_8bit"], r["zero_shot_float"], r["zero_shot_8bit"]
            L.append(f"| {name} | {rf['1']:.3f} | {rf['10']:.3f} | {rf['100']:.3f} | {rq['1']:.3f} | {rq['10']:.3f} | "
                     f"{rq['100']:.3f} | {paper} | {zf['shape']:.3f} ({zq['shape']:.3f}) | {zf['colour']:.3f} ({zq['colour']:.3f}) |")
        L += [""] + [f"- {k}: {yes(v)}" for k, v in t1["targets"].items()] + [""]
    ts = res.get("text_search")
    if ts:
        L += ["## 2. Text search precision@60 (`Catalog.search_text` on the stored codes)", "",
              "| concept type | concepts | mean P@60 | min | prevalence |", "|---|---|---|---|---|"]
        for k, v in ts.items():
            L.append(f"| {k} | {len(v['per_concept'])} | {v['mean']:.3f} | {v['min']:.3f} | {v['prevalence']:.4f} |")
        L += ["", f"- colour+shape mean P@60 >= 0.9: {yes(ts['colour+shape']['mean'] >= 0.9)}", "",
              "Per concept (colour+shape): " + ", ".join(f"{t[2:]} {v:.2f}" for t, v in ts["colour+shape"]["per_concept"].items()),
              "", f"![text search]({stem.name}_text_search.png)", ""]
    ft = res.get("finetune")
    if ft:
        L += ["## 3. Fine-tuning F1 (`SearchSession`)", "",
              "Round 1: the top 60 of the text search labelled by ground truth, `refine(model)` with 500 random "
              "negatives outside the query's top 2,000; F1 of the result over the whole catalog. Round 2: plus the "
              "first 60 not-yet-labelled refine results, labelled by ground truth.", "",
              "| model | " + " | ".join(f"{k} r1 / r2" for k in next(iter(ft["models"].values()))) + " | mean refine s |",
              "|---" * (len(next(iter(ft["models"].values()))) + 2) + "|"]
        for mname, d in ft["models"].items():
            L.append(f"| {mname} | " + " | ".join(f"{v['round1']['mean']:.3f} / {v['round2']['mean']:.3f}" for v in d.values())
                     + f" | {ft['refine_s_mean'][mname]:.2f} |")
        L += [""] + [f"- {k}: {yes(v)}" for k, v in ft.get("targets", {}).items()]
        L += ["- prototype (an earlier study of the demo world): random forest 0.67 (plain negatives) to 0.87 (filtered + balanced).",
              "", f"![fine-tuning]({stem.name}_finetune.png)", ""]
    f3 = res.get("figure3")
    if f3:
        L += ["## 4. Figure 3 on demo concepts (`figure3_digits.run`, class = colour+shape)", "",
              f"{len(f3['concepts'])} colour+shape concepts x {f3['reps']} draws, {f3['n_rows']:,} catalog rows: "
              + ", ".join(c[2:] for c in f3["concepts"]) + ".", "",
              "| method | " + " | ".join(f"p={p}" for p in f3["ps"]) + " | first p beating NN |",
              "|---" * (len(f3["ps"]) + 2) + "|"]
        for mname, c in f3["f1"].items():
            L.append(f"| {mname} | " + " | ".join(f"{v:.3f}" for v in c) + f" | {f3['first_p_beating_nn'].get(mname, '-')} |")
        L += [""] + [f"- {k}: {yes(v)}" for k, v in f3["targets"].items()]
        L += ["- the paper (CLIP features): branches 22, ensemble 8.", "", f"![figure 3]({stem.name}_figure3.png)", ""]
    L += ["## Times (s)", "", "| step | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in res["timings"].items()]
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=ROOT / "data" / "demo")
    ap.add_argument("--quick", action="store_true",
                    help="fewer concepts (8 colour+shape, 2 per other type), 300 recall queries, 5,000 pairs, "
                         "10 head epochs, Figure 3 on 4 concepts x 1 draw")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_demo", help="results stem (.json / .md added)")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 23")
    ap.add_argument("--pairs", type=int, default=None, help="(image, caption) training pairs (default 20,000)")
    ap.add_argument("--recall-queries", type=int, default=None, help="default 1,000")
    ap.add_argument("--head-epochs", type=int, default=None, help="default 20 (the build's)")
    ap.add_argument("--fig3-concepts", type=int, default=None, help="colour+shape concepts in Figure 3 (default 16; 64 = all)")
    ap.add_argument("--reps", type=int, default=None, help="Figure-3 draws per concept and p (default 3)")
    ap.add_argument("--jobs", type=int, default=2, help="processes for rendering images")
    args = ap.parse_args()
    q = args.quick
    args.pairs = args.pairs or (5000 if q else 20000)
    args.recall_queries = args.recall_queries or (300 if q else 1000)
    args.head_epochs = args.head_epochs or (10 if q else 20)
    args.fig3_concepts = args.fig3_concepts or (4 if q else 16)
    args.reps = args.reps or (1 if q else 3)

    t0 = time.perf_counter()
    cat = open_catalog(args.catalog)
    if cat.demo_world is None:
        sys.exit(f"{args.catalog} is not a demo-world catalog (its manifest names no demo_world)")
    enc = cat.manifest.get("encoder", {})
    res = {"catalog": repo_path(args.catalog), "n_items": cat.n_items, "quick": q, "machine": machine(),
           "command": "python benchmarks/quality_demo.py " + " ".join(sys.argv[1:]),
           "encoder": f"{enc.get('name', enc.get('model'))} + reducer {enc.get('reducer')}",
           "build": (cat.manifest.get("extra") or {}).get("build", {}), "timings": {}}
    res["build"].pop("train_history", None)
    timings = res["timings"]
    sets = concept_sets(q)
    truths = {t: concept_mask(cat.items, t) for texts in sets.values() for t in texts}

    if "1" in args.sections:
        res["table1"] = table1(cat, args, timings)
    if "2" in args.sections:
        t = time.perf_counter()
        res["text_search"] = text_search_p60(cat, sets, truths)
        timings["text_search_s"] = time.perf_counter() - t
    if "3" in args.sections:
        t = time.perf_counter()
        res["finetune"] = finetune(cat, sets, truths, SESSION_MODELS, timings)
        timings["finetune_s"] = time.perf_counter() - t
    if "4" in args.sections:
        cs = all_color_shape_concepts()
        rng = np.random.default_rng(0)
        pick = cs if args.fig3_concepts >= len(cs) else [cs[i] for i in sorted(rng.choice(len(cs), args.fig3_concepts, replace=False))]
        res["figure3"] = figure3(cat, pick, args.reps, timings)
    res["seconds"] = time.perf_counter() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    res["plots"] = {name: repo_path(f) for name, f in plots(res, args.out).items()}
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = markdown(res, args.out)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
