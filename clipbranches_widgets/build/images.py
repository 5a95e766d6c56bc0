"""Build catalogs: pixels -> encoder -> reducer (32-d) -> 8-bit codes -> catalog folder.

The pipeline notebooks (``pipeline/``) and the CLI (``python -m clipbranches_widgets
build-catalog``) call these functions; each step is usable on its own:

1. :func:`~clipbranches_widgets.demo.train_clip.train_demo_clip` trains the demo CLIP,
2. :func:`embed_world` / :func:`embed_images` turn pictures into full-width features,
3. :func:`caption_pairs` makes (image, caption) feature pairs and :func:`fit_reducer` fits the
   32-d reducer on them (PCA, head, head + KoLeo),
4. :func:`fit_quantizer` picks the 8-bit mapping,
5. :func:`write_encoded_catalog` writes the folder with everything a query needs.

:func:`build_demo_catalog` and :func:`build_folder_catalog` run all of it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..catalog import DEFAULT_CATALOG, DEFAULT_MODEL, write_catalog
from ..catalog.quantize import GlobalQuantizer, PerDimQuantizer
from ..embedding.reducers import REDUCER_FILES, IdentityReducer, PCAReducer

__all__ = ["embed_world", "embed_images", "caption_pairs", "fit_reducer", "fit_quantizer",
           "write_encoded_catalog", "build_demo_catalog", "build_folder_catalog"]

#: where the default catalog and the demo CLIP live in a checkout


def _tqdm():
    from tqdm.auto import tqdm

    return tqdm


def embed_world(encoder, world, n: int, *, start: int = 0, chunk: int = 5000, n_jobs: int = 2,
                progress: bool = True) -> np.ndarray:
    """Render images ``start .. start+n-1`` of a ShapesWorld chunk by chunk and embed them.

    Returns float32 (n, encoder.embed_dim) unit rows; memory stays at one chunk of pixels.
    """
    out = np.empty((int(n), encoder.embed_dim), np.float32)
    bar = _tqdm()(total=int(n), desc="render + embed", unit="img", disable=not progress)
    with bar:
        for s in range(0, int(n), chunk):
            e = min(int(n), s + chunk)
            pixels = world.images(start + s, start + e, n_jobs=n_jobs)
            out[s:e] = encoder.encode_images(pixels, batch_size=500, progress=False)
            bar.update(e - s)
    return out


def embed_images(encoder, paths, *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Embed image files (EXIF-oriented), ``batch_size`` decoded pictures in memory at a time."""
    from .ingest import load_image

    paths = list(paths)
    out = np.empty((len(paths), encoder.embed_dim), np.float32)
    bar = _tqdm()(total=len(paths), desc="embed images", unit="img", disable=not progress)
    with bar:
        for s in range(0, len(paths), batch_size):
            batch = [load_image(p) for p in paths[s:s + batch_size]]
            out[s:s + len(batch)] = encoder.encode_images(batch, batch_size=batch_size, progress=False)
            bar.update(len(batch))
    return out


def caption_pairs(encoder, world, n: int, *, start: int = 0, random_state: int = 0,
                  n_jobs: int = 2, progress: bool = True):
    """(image features, text features) of ``n`` world images with one fresh rich caption each."""
    from ..demo import rich_caption

    rng = np.random.default_rng(random_state)
    image_features = embed_world(encoder, world, n, start=start, n_jobs=n_jobs, progress=progress)
    captions = [rich_caption(world.metadata(start + i), rng) for i in range(int(n))]
    return image_features, encoder.encode_texts(captions, progress=progress)


def fit_reducer(kind: str, image_features, text_features=None, *, out_dim: int = 32,
                koleo_weight: float = 0.1, epochs: int = 20, random_state: int = 0,
                progress: bool = True):
    """Fit a reducer from full-width features to ``out_dim`` unit vectors.

    kind: "pca" (image features only), "head" (contrastive head, no KoLeo), "head-koleo"
    (contrastive + ``koleo_weight`` x KoLeo) or "none". Heads need paired ``text_features``.
    """
    if kind == "none":
        return IdentityReducer()
    if kind == "pca":
        return PCAReducer(out_dim).fit(image_features)
    if kind in ("head", "head-koleo"):
        if text_features is None:
            raise ValueError(f"reducer {kind!r} trains on (image, caption) pairs: pass text_features "
                             "(a catalog without captions can use reducer='pca')")
        from ..embedding.head import train_head
        from ..embedding.reducers import HeadReducer

        head = train_head(image_features, text_features, out_dim=out_dim, epochs=epochs,
                          koleo_weight=koleo_weight if kind == "head-koleo" else 0.0,
                          random_state=random_state, progress=progress)
        return HeadReducer(head, kind)
    raise ValueError(f"unknown reducer {kind!r}; expected one of {sorted(REDUCER_FILES)}")


def fit_quantizer(kind: str, reduced):
    """"global" (the paper's fixed map for unit vectors) or "per-dim" (fitted 0.1%-99.9% range)."""
    if kind == "global":
        return GlobalQuantizer()
    if kind == "per-dim":
        return PerDimQuantizer().fit(reduced)
    raise ValueError(f"quantizer must be 'global' or 'per-dim'; got {kind!r}")


def _encoder_assets(encoder) -> tuple[dict, dict]:
    """(manifest spec, files) for an encoder.

    Weights from an open_clip pretrained tag are re-created from the Hugging Face cache at query
    time; any other weights (trained here, a local-dir folder, a checkpoint file, random) are
    stored in the catalog so that queries always use exactly the encoder that made the codes.
    """
    tag = encoder.pretrained
    if tag and not Path(str(tag)).is_file():
        return {"model": str(encoder.name), "pretrained": tag, "embed_dim": encoder.embed_dim}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = encoder.save_local_dir(Path(tmp) / "encoder")
        files = {f"encoder/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}
    return {"model": "local-dir", "dir": "encoder", "name": str(encoder.name),
            "embed_dim": encoder.embed_dim}, files


def _encoder_entry(encoder, reducer) -> tuple[dict, dict]:
    """(manifest "encoder" entry, asset files) for codes made by ``reducer`` from ``encoder``'s
    features. ``encoder`` None (embeddings made elsewhere, model unknown): the entry names only the
    reducer, so the catalog is searched by item and by trained models, not by text."""
    spec, assets = _encoder_assets(encoder) if encoder is not None else ({}, {})
    spec["reducer"] = reducer.kind
    data = reducer.to_bytes()
    if data is not None:
        spec["reducer_file"] = REDUCER_FILES[reducer.kind]
        assets[spec["reducer_file"]] = data
    return spec, assets


def write_encoded_catalog(path, *, encoder, reducer, quantizer, reduced, items, thumbnails=None,
                          extra: dict | None = None):
    """Quantize ``reduced`` (N, 32) and write a catalog that can answer text and image queries."""
    spec, assets = _encoder_entry(encoder, reducer)
    codes = quantizer.quantize(reduced)
    return write_catalog(path, codes, items, quantizer=quantizer, encoder=spec,
                         thumbnails=thumbnails, extra=extra, assets=assets)


def build_demo_catalog(path=DEFAULT_CATALOG, *, n_items: int = 50_000, seed: int = 777,
                       objects_per_image: dict | None = None, encoder=None,
                       train_steps: int = 2000, n_train_images: int = 50_000, train_seed: int = 1,
                       n_head_pairs: int = 50_000, reducer: str = "head-koleo",
                       koleo_weight: float = 0.1, head_epochs: int = 20,
                       quantizer: str = "global", save_model=None, random_state: int = 0,
                       n_jobs: int = 2, progress: bool = True):
    """Build a shapes-world catalog end to end; return the opened :class:`Catalog`.

    encoder: an ``Encoder``, a local-dir folder of a trained demo CLIP, or None to train one
    (``train_steps`` steps on ``n_train_images`` images of world ``train_seed``; saved to
    ``save_model`` if given). The reducer is fitted on ``n_head_pairs`` (image, caption) pairs of
    the training world, never on the catalog's own images.
    """
    from ..demo import ShapesWorld

    timings = {}
    t0 = time.perf_counter()
    world = ShapesWorld(seed=seed, objects_per_image=objects_per_image)
    train_world = ShapesWorld(seed=train_seed, objects_per_image=objects_per_image)
    history = None
    if encoder is None:
        from ..demo.train_clip import train_demo_clip

        encoder, history = train_demo_clip(train_world, n_images=n_train_images, steps=train_steps,
                                           random_state=random_state, n_jobs=n_jobs, progress=progress)
        if save_model is not None:
            encoder.save_local_dir(save_model)
        timings["train_clip_s"] = time.perf_counter() - t0
    elif isinstance(encoder, (str, Path)):
        from ..embedding.encoders import DEMO_MODEL_NAME, load_encoder

        encoder = load_encoder("local-dir:" + str(encoder), device="cpu")
        encoder.name = DEMO_MODEL_NAME  # the demo CLIP, whichever folder it was read from

    t = time.perf_counter()
    features = embed_world(encoder, world, n_items, n_jobs=n_jobs, progress=progress)
    timings["embed_s"] = time.perf_counter() - t

    t = time.perf_counter()
    text_features = None
    if reducer in ("head", "head-koleo"):
        img_pairs, text_features = caption_pairs(encoder, train_world, min(n_head_pairs, n_train_images),
                                                 random_state=random_state, n_jobs=n_jobs,
                                                 progress=progress)
    else:
        img_pairs = features
    red = fit_reducer(reducer, img_pairs, text_features, koleo_weight=koleo_weight,
                      epochs=head_epochs, random_state=random_state, progress=progress)
    reduced = red.embed_images(features)
    quant = fit_quantizer(quantizer, reduced)
    timings["reducer_s"] = time.perf_counter() - t

    items = world.items(n_items)
    extra = {"demo_world": {"seed": world.seed, "image_size": world.image_size,
                            "objects_per_image": {str(k): v for k, v in world.objects_per_image.items()}},
             "build": {"n_items": n_items, "train_steps": train_steps, "n_train_images": n_train_images,
                       "reducer": reducer, "koleo_weight": koleo_weight, "quantizer": quantizer,
                       "random_state": random_state, "timings": timings}}
    if history is not None:
        extra["build"]["train_history"] = history
    return write_encoded_catalog(path, encoder=encoder, reducer=red, quantizer=quant,
                                 reduced=reduced, items=items, extra=extra)


def build_folder_catalog(folder, path, *, model: str = "ViT-B-32", pretrained: str | None = None,
                         captions_csv=None, reducer: str = "auto", quantizer: str = "global",
                         thumb_side: int = 160, head_epochs: int = 20, random_state: int = 0,
                         progress: bool = True):
    """Build a catalog from a folder of jpg/png/webp pictures; return ``(catalog, ingest_result)``.

    Broken or non-image files are skipped and listed in ``ingest_result.report()``. reducer
    "auto" trains a head with KoLeo when every kept picture has a caption (and there are at least
    64), else PCA. ``model`` may be ``"local-dir:/path"`` or any open_clip name + ``pretrained``.
    """
    import pyarrow as pa

    from ..embedding.encoders import load_encoder
    from .ingest import scan_folder

    found = scan_folder(folder, captions_csv=captions_csv, thumb_side=thumb_side, progress=progress)
    encoder = load_encoder(model, pretrained)
    features = embed_images(encoder, [found.folder / p for p in found.paths], progress=progress)
    captions = list(found.captions)  # file stems where the CSV gives none
    have_captions = captions_csv is not None and len(captions) >= 64
    if reducer == "auto":
        reducer = "head-koleo" if have_captions else ("pca" if len(captions) >= 32 else "none")
    text_features = encoder.encode_texts(captions) if reducer.startswith("head") else None
    if reducer == "none" and encoder.embed_dim != 32:
        raise ValueError(f"the encoder gives {encoder.embed_dim}-d features; a catalog needs 32: "
                         "use reducer='pca' (needs >= 32 pictures) or a head with captions")
    red = fit_reducer(reducer, features, text_features, epochs=head_epochs,
                      random_state=random_state, progress=progress)
    reduced = red.embed_images(features)
    quant = fit_quantizer(quantizer, reduced)
    items = pa.table({"caption": pa.array([c or "" for c in captions], pa.string()),
                      "source": pa.array([str(p) for p in found.paths], pa.string()),
                      "width": pa.array([s[0] for s in found.sizes], pa.int32()),
                      "height": pa.array([s[1] for s in found.sizes], pa.int32())})
    cat = write_encoded_catalog(path, encoder=encoder, reducer=red, quantizer=quant, reduced=reduced,
                                items=items, thumbnails=found.thumbnails,
                                extra={"build": {"folder": str(folder), "reducer": reducer,
                                                 "quantizer": quantizer,
                                                 "skipped": [str(s.path) for s in found.skipped]}})
    return cat, found
