"""What every kind of catalog offers a session: ids, codes of ids, items of ids, nearest
neighbours, a fitted model's answer, tiles and the query encoder.

:class:`CatalogBase` implements the user-facing searches (text, image, "more like this") once, on
top of the primitives each kind provides: one folder (:class:`~.folder.Catalog`), shards
(:class:`~.sharded.ShardedCatalog`) or shards on Dask workers (:class:`~.distributed.DaskCatalog`).
"""

from __future__ import annotations

import io
import threading

import numpy as np


def check_k(k) -> int:
    """``k`` (how many results) as an int >= 1, or a ValueError."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k!r}")
    return int(k)


def check_ids(ids, n_items: int) -> np.ndarray:
    """``ids`` as an int64 array of valid row ids (any order, repeats allowed), or a ValueError."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 1-D sequence of integer item ids; got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_items)]
    if bad.size:
        raise ValueError(f"unknown item id {int(bad[0])}: this catalog has ids 0..{n_items - 1}")
    return arr


class CatalogBase:
    """The query API. Subclasses set ``path``, ``manifest``, ``quantizer`` and implement
    ``n_items``, ``dim``, ``fingerprint``, ``rows``, ``items_of``, ``search_vectors``, ``apply``,
    ``thumbnails``."""

    def __init__(self):
        self._lock = threading.Lock()  # guards lazily created parts (encoder, tiles, index, shards)
        self._query_encoder = None

    # -- primitives (per kind) ------------------------------------------------------------------

    n_items: int
    dim: int
    fingerprint: str

    def rows(self, ids) -> np.ndarray:
        """The uint8 codes of catalog ids ``ids`` (in that order), shape (len(ids), dim)."""
        raise NotImplementedError

    def items_of(self, ids):
        """The items table's rows for ``ids`` (in that order; ``id`` = the catalog id), a pyarrow Table."""
        raise NotImplementedError

    def search_vectors(self, queries, k: int = 60, *, exclude=None):
        """(ids, scores), each (n_queries, k'): the k items nearest to each float query, best first
        (cosine with the dequantized codes; ties by ascending id). ``exclude``: ids never returned."""
        raise NotImplementedError

    def apply(self, model):
        """Every item the fitted model calls positive, ranked: an engine ``SearchResult``."""
        raise NotImplementedError

    # -- built on the primitives ------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.n_items:,} items x {self.dim} dims)"

    def check_id(self, item_id) -> int:
        """``item_id`` as an int, or a ValueError naming the valid range (bools are not ids)."""
        if isinstance(item_id, (bool, np.bool_)) or not isinstance(item_id, (int, np.integer)):
            raise ValueError(f"item ids are integers; got {item_id!r}")
        if not 0 <= int(item_id) < self.n_items:
            raise ValueError(f"unknown item id {item_id}: this catalog has ids 0..{self.n_items - 1}")
        return int(item_id)

    @property
    def has_thumbnails(self) -> bool:
        """True when items have pictures (stored, the user's files, or generated), not only text tiles."""
        return self.thumbnails.pictures

    def thumbnail(self, item_id) -> bytes:
        """JPEG bytes of one item's tile: its picture, or a text tile (caption, url) when there is none."""
        return self.thumbnails.thumbnail(self.check_id(item_id))

    def image(self, item_id):
        """One item's tile as a PIL image (see :meth:`thumbnail`)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.thumbnail(item_id))).convert("RGB")

    def query_encoder(self):
        """The :class:`~clipbranches_widgets.embedding.query.QueryEncoder` for text and image queries.

        Created once. Where a query service runs (``python -m clipbranches_widgets serve`` sets
        its address in the environment of every kernel it starts), a
        :class:`~clipbranches_widgets.embedding.remote.RemoteQueryEncoder` that asks it, so this
        process never loads torch; otherwise the encoder itself (torch and the CLIP weights).
        Raises ValueError when the catalog records no encoder that can be loaded here.
        """
        with self._lock:
            if self._query_encoder is None:
                from ..embedding.query import QueryEncoder
                from ..embedding.remote import service_from_environment

                self._query_encoder = service_from_environment(self) or QueryEncoder.for_catalog(self)
            return self._query_encoder

    def search_text(self, text, k: int = 60):
        """Nearest items to a text query: ``(ids, scores)``, best first (cosine similarity).

        Raises ValueError for an empty or non-string query, or a catalog without a text encoder.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text query must be a non-empty string; got {text!r}")
        query = self.query_encoder().encode_texts([text.strip()])
        ids, scores = self.search_vectors(query, k=check_k(k))
        return ids[0], scores[0]

    def search_image(self, image, k: int = 60):
        """Nearest items to an image: a catalog item id (its stored code; the item itself comes
        first) or a PIL image (encoded like the catalog's images). ``(ids, scores)``, best first."""
        k = check_k(k)
        if isinstance(image, (int, np.integer)) and not isinstance(image, (bool, np.bool_)):
            query = self.quantizer.dequantize(self.rows([self.check_id(image)]))
        elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            query = self.query_encoder().encode_images([image])
        else:
            raise ValueError(f"search_image takes a catalog item id or a PIL image; got {type(image).__name__}")
        ids, scores = self.search_vectors(query, k=k)
        return ids[0], scores[0]

    def search_similar(self, item_id, k: int = 60, *, include_self: bool = False):
        """"More like this": (ids, scores) of the k items nearest to item ``item_id``'s code."""
        i = self.check_id(item_id)
        query = self.quantizer.dequantize(self.rows([i]))
        ids, scores = self.search_vectors(query, k=check_k(k), exclude=None if include_self else [i])
        return ids[0], scores[0]
