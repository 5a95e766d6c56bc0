"""Query side of a catalog: text or image -> the catalog's 32-d space (imports torch lazily).

A catalog's manifest records how its codes were made (``manifest["encoder"]``)::

    {"model": "local-dir", "dir": "encoder"}              # weights stored in the catalog folder
    {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}  # weights from open_clip / the HF cache
    ... plus "reducer": "pca" | "head" | "head-koleo" | "none" and "reducer_file": "<name>"

:class:`QueryEncoder` loads that encoder and reducer so that queries land in the same space as
the catalog: ``reducer(encoder(query))`` as unit vectors, compared with the dequantized codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .reducers import load_reducer

__all__ = ["QueryEncoder"]


def verified_file(catalog, name) -> Path:
    """A file the catalog's manifest lists (so its size and checksum were checked on open), inside it."""
    from ..catalog.folder import catalog_file

    if name not in (catalog.manifest.get("files") or {}):
        raise ValueError(f"catalog {catalog.path} names {name!r} for its encoder, but its manifest does not "
                         f"list (and verify) that file")
    return catalog_file(catalog.path, name)


def verified_dir(catalog, name) -> Path:
    """A folder inside the catalog whose every file the manifest lists (e.g. the encoder's weights)."""
    listed = [f for f in (catalog.manifest.get("files") or {}) if f.startswith(f"{name}/")]
    if not listed:
        raise ValueError(f"catalog {catalog.path} names the encoder folder {name!r}, but its manifest lists no "
                         f"files in it")
    folder = verified_file(catalog, listed[0]).parent
    extra = sorted(str(p.relative_to(catalog.path)) for p in folder.rglob("*") if p.is_file()
                   and str(p.relative_to(catalog.path)) not in catalog.manifest["files"])
    if extra:
        raise ValueError(f"catalog {catalog.path}: {extra[0]!r} in the encoder folder is not in the manifest")
    return folder


class QueryEncoder:
    """An encoder (``encoders.Encoder``) followed by a reducer; outputs float32 unit rows."""

    def __init__(self, encoder, reducer):
        self.encoder = encoder
        self.reducer = reducer

    def __repr__(self) -> str:
        return f"QueryEncoder({self.encoder!r}, reducer={self.reducer.kind!r})"

    @classmethod
    def for_catalog(cls, catalog) -> "QueryEncoder":
        """Load the encoder and reducer a catalog's manifest names (ValueError if there is none)."""
        spec = catalog.manifest.get("encoder") or {}
        if "model" not in spec:
            hint = f"; text search {spec['text_search']}" if isinstance(spec.get("text_search"), str) else ""
            raise ValueError(
                f"catalog {catalog.path} records no query encoder (manifest 'encoder' has no "
                "'model'), so it can only be searched by item id (search_image(item_id)) or by "
                f"a trained model, not by text or by a new picture{hint}")
        from .encoders import load_encoder

        if spec["model"] == "local-dir":
            encoder = load_encoder("local-dir:" + str(verified_dir(catalog, spec.get("dir", "encoder"))), device="cpu")
        else:
            encoder = load_encoder(spec["model"], spec.get("pretrained"))
        kind = spec.get("reducer", "none")
        file = spec.get("reducer_file")
        reducer = load_reducer(kind, None if file is None else verified_file(catalog, file))
        return cls(encoder, reducer)

    def encode_texts(self, texts) -> np.ndarray:
        """Strings -> (n, catalog dim) float32 unit rows."""
        return self.reducer.embed_texts(self.encoder.encode_texts(texts))

    def encode_images(self, images) -> np.ndarray:
        """PIL images (or a uint8 (n, H, W, 3) array) -> (n, catalog dim) float32 unit rows.

        PIL images are made upright (EXIF) and 8-bit RGB first, as catalog pictures are when built."""
        if not isinstance(images, np.ndarray):
            from ..pictures import to_rgb

            images = [to_rgb(im) if hasattr(im, "mode") else im for im in images]
        return self.reducer.embed_images(self.encoder.encode_images(images, progress=False))
