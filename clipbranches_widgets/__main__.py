"""Command line: ``python -m clipbranches_widgets {build-catalog,search,serve} ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .catalog.sharded import SHARD_ROWS

#: the open_clip model a folder of pictures is embedded with when --model is not given
FOLDER_MODEL, FOLDER_PRETRAINED = "ViT-B-32", "laion2b_s34b_b79k"


def _build(args) -> int:
    from . import build

    t0 = time.perf_counter()
    sources = [flag for flag, value in (("--folder", args.folder), ("--embeddings", args.embeddings),
                                        ("--webdataset", args.webdataset)) if value]
    if len(sources) > 1:
        raise ValueError(f"give one of --folder, --embeddings, --webdataset; got {' and '.join(sources)}")
    if args.embeddings:
        return _build_embeddings(args, t0)
    if args.webdataset:
        cat, found = build.build_webdataset_catalog(
            args.webdataset, args.out, model=args.model or FOLDER_MODEL, pretrained=args.pretrained or FOLDER_PRETRAINED,
            reducer="pca" if args.reducer == "auto" else args.reducer, quantizer=args.quantizer,
            random_state=args.random_state)
        print(found.report())
    elif args.folder:
        cat, found = build.build_folder_catalog(
            args.folder, args.out, model=args.model or FOLDER_MODEL,
            pretrained=args.pretrained or FOLDER_PRETRAINED,
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


def _build_embeddings(args, t0: float) -> int:
    from .build.embeddings import build_embedding_catalog

    cat = build_embedding_catalog(
        args.embeddings, args.out, reducer="pca" if args.reducer == "auto" else args.reducer,
        model=args.model, pretrained=args.pretrained, image_root=args.image_root,
        shard_rows=args.shard_rows, sample_rows=args.sample_rows, quantizer=args.quantizer,
        random_state=args.random_state, head_epochs=args.head_epochs)
    print(f"wrote {cat.n_items:,} rows in {cat.n_shards} shard{'s' * (cat.n_shards != 1)} to {cat.path} "
          f"in {time.perf_counter() - t0:.1f} s")
    if "model" not in (cat.manifest.get("encoder") or {}):
        print("no model given: text search needs --model/--pretrained (the encoder that made the embeddings); "
              f"searching by item (python -m clipbranches_widgets search {args.out} --item N) and refining by "
              "marks work")
    return 0


def _search(args) -> int:
    from . import open_catalog

    cat = open_catalog(args.catalog)
    if args.item is not None:
        ids, scores = cat.search_image(args.item, k=args.k)
    else:
        if args.text.strip() and "model" not in (cat.manifest.get("encoder") or {}):
            raise ValueError(f"catalog {args.catalog} records no text encoder: text search needs the encoder "
                             "that made its embeddings (rebuild it with build-catalog ... --model NAME "
                             "--pretrained TAG); search by item works: --item N")
        ids, scores = cat.search_text(args.text, k=args.k)
    page = cat.items_of(ids)
    captions = page.column("caption").to_pylist() if "caption" in page.column_names else [""] * len(ids)
    for i, s, caption in zip(ids.tolist(), scores.tolist(), captions):
        print(f"{i:>8}  {s:+.3f}  {caption}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:  # its own options, and Voilà's after them (see serve --help)
        from .serve import main as serve_main

        return serve_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m clipbranches_widgets",
                                     description="Build, query and serve clipbranches catalogs.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve the dashboard (Voilà) to one visitor or a class: serve --visitors 30")

    b = sub.add_parser("build-catalog", help="build a catalog from the demo world, pictures or embeddings",
                       description="Without --folder, --webdataset or --embeddings: generate the shapes "
                                   "world, train (or load) the demo CLIP, and build a catalog. With --folder "
                                   "(pictures) or --webdataset (img2dataset tars): embed them with an "
                                   "open_clip model. With "
                                   "--embeddings: a clip-retrieval / LAION embedding folder (img_emb/, "
                                   "metadata/, optional text_emb/) becomes a sharded catalog; a rerun "
                                   "of an interrupted build resumes.")
    b.add_argument("out", help="catalog folder to write (replaced atomically)")
    b.add_argument("--folder", help="folder of jpg/png/webp pictures (default: the demo world)")
    b.add_argument("--embeddings", help="clip-retrieval inference output folder (img_emb/, metadata/, text_emb/)")
    b.add_argument("--webdataset", help="img2dataset output folder (00000.tar with KEY.jpg/.txt/.json, ...): the "
                                        "pictures are embedded with --model (resumable per tar)")
    b.add_argument("--captions", help="CSV with filename,caption columns (folder mode)")
    b.add_argument("--model", help=f"open_clip model name or local-dir:/path (folder / webdataset: default "
                                    f"{FOLDER_MODEL}; embeddings: the model that made them, for text search)")
    b.add_argument("--pretrained", help=f"open_clip pretrained tag (folder mode default: {FOLDER_PRETRAINED})")
    b.add_argument("--image-root", help="embeddings: folder the metadata's image_path values are relative to "
                                        "(tiles show the pictures)")
    b.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="embeddings: rows per shard")
    b.add_argument("--sample-rows", type=int, default=200_000,
                   help="embeddings: rows the reducer is fitted on (a seeded uniform sample)")
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
