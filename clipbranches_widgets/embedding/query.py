"""Query side of a catalog: text or image -> the catalog's 32-d space (imports torch lazily).

A catalog's manifest records how its codes were made (``manifest["encoder"]``)::

    {"model": "local-dir", "dir": "encoder"}              # weights stored in the catalog folder
    {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}  # weights from open_clip / the HF cache
    ... plus "reducer": "pca" | "head" | "head-koleo" | "none" and "reducer_file": "<name>"

:class:`QueryEncoder` loads that encoder and reducer so that queries land in the same space as
the catalog: ``reducer(encoder(query))`` as unit vectors, compared with the dequantized codes.
"""

from __future__ import annotations

import numpy as np

from .reducers import load_reducer

__all__ = ["QueryEncoder"]


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
            raise ValueError(
                f"catalog {catalog.path} records no query encoder (manifest 'encoder' has no "
                "'model'), so it can only be searched by item id (search_image(item_id)) or by "
                "a trained model, not by text or by a new picture")
        from .encoders import load_encoder

        if spec["model"] == "local-dir":
            encoder = load_encoder("local-dir:" + str(catalog.path / spec.get("dir", "encoder")),
                                   device="cpu")
        else:
            encoder = load_encoder(spec["model"], spec.get("pretrained"))
        kind = spec.get("reducer", "none")
        file = spec.get("reducer_file")
        reducer = load_reducer(kind, None if file is None else catalog.path / file)
        return cls(encoder, reducer)

    def encode_texts(self, texts) -> np.ndarray:
        """Strings -> (n, catalog dim) float32 unit rows."""
        return self.reducer.embed_texts(self.encoder.encode_texts(texts))

    def encode_images(self, images) -> np.ndarray:
        """PIL images (or a uint8 (n, H, W, 3) array) -> (n, catalog dim) float32 unit rows."""
        return self.reducer.embed_images(self.encoder.encode_images(images, progress=False))
