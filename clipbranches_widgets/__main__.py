"""Command line: ``python -m clipbranches_widgets {build-catalog,search} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _build(args) -> int:
    from . import build

    t0 = time.perf_counter()
    if args.folder:
        cat, found = build.build_folder_catalog(
            args.folder, args.out, model=args.model, pretrained=args.pretrained,
            captions_csv=args.captions, reducer=args.reducer, quantizer=args.quantizer,
            head_epochs=args.head_epochs, random_state=args.random_state)
        print(found.report())
    else:
        objects = json.loads(args.objects) if args.objects else None
        cat = build.build_demo_catalog(
            args.out, n_items=args.items, seed=args.seed, objects_per_image=objects,
            encoder=args.encoder_dir, train_steps=args.train_steps,
            n_train_images=args.train_images, n_head_pairs=args.train_images,
            reducer="head-koleo" if args.reducer == "auto" else args.reducer,
            head_epochs=args.head_epochs, quantizer=args.quantizer, save_model=args.save_model,
            random_state=args.random_state, n_jobs=args.jobs)
    print(f"wrote {cat!r} in {time.perf_counter() - t0:.1f} s")
    return 0


def _search(args) -> int:
    from . import open_catalog

    cat = open_catalog(args.catalog)
    if args.item is not None:
        ids, scores = cat.search_image(args.item, k=args.k)
    else:
        ids, scores = cat.search_text(args.text, k=args.k)
    page = cat.items_of(ids)
    captions = page.column("caption").to_pylist() if "caption" in page.column_names else [""] * len(ids)
    for i, s, caption in zip(ids.tolist(), scores.tolist(), captions):
        print(f"{i:>8}  {s:+.3f}  {caption}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipbranches_widgets",
                                     description="Build and query clipbranches catalogs.")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-catalog", help="build a catalog from the demo world or a folder",
                       description="Without --folder: generate the shapes world, train (or load) "
                                   "the demo CLIP, and build a catalog. With --folder: ingest "
                                   "your pictures and embed them with an open_clip model.")
    b.add_argument("out", help="catalog folder to write (replaced atomically)")
    b.add_argument("--folder", help="folder of jpg/png/webp pictures (default: the demo world)")
    b.add_argument("--captions", help="CSV with filename,caption columns (folder mode)")
    b.add_argument("--model", default="ViT-B-32",
                   help="open_clip model name or local-dir:/path (folder mode)")
    b.add_argument("--pretrained", default="laion2b_s34b_b79k", help="open_clip pretrained tag")
    b.add_argument("--items", type=int, default=50_000, help="demo catalog size")
    b.add_argument("--seed", type=int, default=777, help="demo world seed")
    b.add_argument("--objects", help='objects per image as JSON, e.g. \'{"1": 0.4, "2": 0.3, "3": 0.3}\'')
    b.add_argument("--encoder-dir", help="trained demo CLIP (local-dir folder); omit to train one")
    b.add_argument("--save-model", help="where to save a newly trained demo CLIP")
    b.add_argument("--train-steps", type=int, default=2000)
    b.add_argument("--train-images", type=int, default=50_000)
    b.add_argument("--reducer", default="auto", choices=["auto", "pca", "head", "head-koleo", "none"])
    b.add_argument("--head-epochs", type=int, default=20)
    b.add_argument("--quantizer", default="global", choices=["global", "per-dim"])
    b.add_argument("--random-state", type=int, default=0)
    b.add_argument("--jobs", type=int, default=2, help="processes for rendering the demo world")
    b.set_defaults(func=_build)

    s = sub.add_parser("search", help="text or 'more like this' search in a catalog")
    s.add_argument("catalog")
    s.add_argument("text", nargs="?", default="")
    s.add_argument("--item", type=int, help="search by this item's picture instead of text")
    s.add_argument("-k", type=int, default=10)
    s.set_defaults(func=_search)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
