"""Reducers: full-width encoder features -> the catalog's 32-d unit vectors.

A catalog's codes are ``quantizer(reducer(encoder(image)))``; a text query goes through the same
encoder (text side), the same reducer and is compared with the dequantized codes. Three kinds,
compared in the quality report (the paper's Table 1):

* ``"pca"``: :class:`PCAReducer`, one linear map fitted on image features (numpy only), then L2
  normalisation; text features go through the same map.
* ``"head"`` / ``"head-koleo"``: :class:`HeadReducer`, the trained projection heads of
  :mod:`clipbranches_widgets.embedding.head` (torch), without or with the KoLeo spread term.
* ``"none"``: :class:`IdentityReducer`, for encoders whose width already is the catalog's.

Each reducer saves to one file in the catalog folder and :func:`load_reducer` reads it back.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_bytes

__all__ = ["IdentityReducer", "PCAReducer", "HeadReducer", "load_reducer", "REDUCER_FILES"]

#: file name in the catalog folder for each reducer kind
REDUCER_FILES = {"pca": "reducer-pca.npz", "head": "reducer-head.pt", "head-koleo": "reducer-head.pt",
                 "none": None}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class IdentityReducer:
    """Keeps the features as they are (re-normalised)."""

    kind = "none"

    def embed_images(self, features) -> np.ndarray:
        return _unit_rows(features)

    def embed_texts(self, features) -> np.ndarray:
        return _unit_rows(features)

    def to_bytes(self) -> bytes | None:
        return None


class PCAReducer:
    """Principal components of the image features, then L2 normalisation (numpy only).

    ``fit(image_features)`` learns the mean and the top ``out_dim`` components; texts are
    mapped with the same mean and components (CLIP's shared space makes that meaningful).
    """

    kind = "pca"

    def __init__(self, out_dim: int = 32):
        self.out_dim = int(out_dim)
        self.mean_ = None
        self.components_ = None

    def fit(self, image_features, text_features=None, *, chunk_rows: int = 65536) -> "PCAReducer":
        x = np.asarray(image_features)
        if x.ndim != 2 or x.shape[1] < self.out_dim:
            raise ValueError(f"PCA to {self.out_dim} dims needs features of at least {self.out_dim} dims; "
                             f"got shape {x.shape}")
        if x.shape[0] <= self.out_dim:  # n points span at most n - 1 directions: the rest would be noise
            raise ValueError(f"PCA to {self.out_dim} dims needs at least {self.out_dim + 1} pictures; got "
                             f"{x.shape[0]} (add pictures, or use a trained head: --reducer head)")
        mean = x.mean(0, dtype=np.float64)
        # eigenvectors of the d x d covariance, accumulated chunk by chunk in float64: the same axes
        # as an SVD of the centred data, in memory of one chunk instead of n x d float64 copies
        cov = np.zeros((x.shape[1], x.shape[1]))
        for start in range(0, x.shape[0], chunk_rows):
            c = x[start:start + chunk_rows].astype(np.float64) - mean
            cov += c.T @ c
        values, vectors = np.linalg.eigh(cov)
        top = vectors[:, np.argsort(values)[::-1][: self.out_dim]].T
        # a deterministic sign per axis (its largest entry positive), as scikit-learn's svd_flip
        top *= np.sign(top[np.arange(top.shape[0]), np.abs(top).argmax(axis=1)])[:, None]
        self.components_ = top.astype(np.float32)
        self.mean_ = mean.astype(np.float32)
        return self

    def _project(self, features) -> np.ndarray:
        if self.components_ is None:
            raise ValueError("PCAReducer is not fitted; call fit(image_features) first")
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or x.shape[1] != self.components_.shape[1]:
            raise ValueError(f"features must be (n, {self.components_.shape[1]}); got {x.shape}")
        # (x - mean) C^T == x C^T - mean C^T: no full-width centred copy of the chunk
        return _unit_rows(x @ self.components_.T - self.mean_ @ self.components_.T)

    embed_images = _project
    embed_texts = _project

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean_, components=self.components_)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path) -> "PCAReducer":
        with np.load(path, allow_pickle=False) as f:
            r = cls(out_dim=f["components"].shape[0])
            r.mean_, r.components_ = f["mean"], f["components"]
        return r


class HeadReducer:
    """Wraps a :class:`~clipbranches_widgets.embedding.head.TrainedHead` (imports torch)."""

    def __init__(self, head, kind: str = "head-koleo"):
        if kind not in ("head", "head-koleo"):
            raise ValueError(f"HeadReducer kind is 'head' or 'head-koleo', not {kind!r}")
        self.head = head
        self.kind = kind
        self.out_dim = head.out_dim

    def embed_images(self, features) -> np.ndarray:
        return self.head.embed_images(features)

    def embed_texts(self, features) -> np.ndarray:
        return self.head.embed_texts(features)

    def to_bytes(self) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "head.pt"
            self.head.save(path)
            return path.read_bytes()

    @classmethod
    def from_file(cls, path, kind: str = "head-koleo") -> "HeadReducer":
        from .head import TrainedHead

        return cls(TrainedHead.load(path), kind)


def save_reducer(reducer, folder) -> str | None:
    """Write ``reducer`` into ``folder`` under its standard name; return that name (or None)."""
    name = REDUCER_FILES[reducer.kind]
    if name is not None:
        atomic_write_bytes(Path(folder) / name, reducer.to_bytes())
    return name


def load_reducer(kind: str, path=None):
    """Read a reducer written by :func:`save_reducer` (``path`` is its file; None for "none")."""
    if kind == "none":
        return IdentityReducer()
    if kind == "pca":
        return PCAReducer.from_file(path)
    if kind in ("head", "head-koleo"):
        return HeadReducer.from_file(path, kind)
    raise ValueError(f"unknown reducer kind {kind!r}; expected one of {sorted(REDUCER_FILES)}")
