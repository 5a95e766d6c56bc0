"""8-bit scalar quantization of embeddings: the catalog's codes and the queries use the same map.

Two quantizers, both recorded in a catalog's manifest (``to_dict`` / ``quantizer_from_dict``):

* :class:`GlobalQuantizer` (the paper's map, DESIGN.md contract): ``q = clip(floor(127.5 x + 128), 0, 255)``
  for every dim of a unit vector. Simple and data-free, but 32-d unit-vector components mostly lie
  in [-0.5, 0.5], so codes cluster around 128 and use about half of the 256 levels.
* :class:`PerDimQuantizer`: fitted on the catalog, maps each dim's ``[low_j, high_j]`` (by default
  its 0.1% and 99.9% quantiles) onto all 256 levels. Finer boxes for the same 32 bytes; queries
  must use the same fitted bounds (which is why it is stored with the catalog).

``dequantize`` returns bucket centres, so ``quantize(dequantize(q)) == q``.
"""

from __future__ import annotations

import numpy as np


def _check_embeddings(x, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D float array (n, dim); got shape {np.shape(x)}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} have {arr.shape[1]} dims; this quantizer was made for {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


class GlobalQuantizer:
    """The paper's global map for unit vectors: ``q = clip(floor(127.5 x + 128), 0, 255)``."""

    kind = "global"

    def quantize(self, x) -> np.ndarray:
        """uint8 codes (n, d) of float embeddings (n, d) (a single vector gives one row)."""
        arr = _check_embeddings(x)
        return np.clip(np.floor(127.5 * arr + 128.0), 0, 255).astype(np.uint8)

    def dequantize(self, q) -> np.ndarray:
        """Bucket centres: ``(q + 0.5 - 128) / 127.5`` (float32)."""
        return ((np.asarray(q, np.float32) + 0.5 - 128.0) / 127.5).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "formula": "clip(floor(127.5*x + 128), 0, 255)"}


class PerDimQuantizer:
    """Per-dimension map fitted on the catalog: ``[low_j, high_j]`` onto all 256 levels.

    ``fit(embeddings, quantile=0.001)`` sets ``low``/``high`` to each dim's ``quantile`` and
    ``1 - quantile`` quantiles (0 gives min/max); values outside are clipped to 0 / 255.
    """

    kind = "per_dim"

    def __init__(self, low=None, high=None):
        self.low = None if low is None else np.asarray(low, np.float64)
        self.high = None if high is None else np.asarray(high, np.float64)
        if self.low is not None:
            self._check_bounds()

    def _check_bounds(self):
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError("low and high must be 1-D arrays of the same length")
        if not (np.isfinite(self.low).all() and np.isfinite(self.high).all()) or (self.high <= self.low).any():
            raise ValueError("each dim needs finite bounds with high > low")

    def fit(self, embeddings, quantile: float = 0.001) -> "PerDimQuantizer":
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5); got {quantile}")
        arr = _check_embeddings(embeddings)
        if arr.shape[0] < 2:
            raise ValueError("fitting a per-dim quantizer needs at least 2 embeddings")
        self.low = np.quantile(arr, quantile, axis=0)
        self.high = np.quantile(arr, 1.0 - quantile, axis=0)
        flat = self.high <= self.low  # a constant dim: give it a tiny range so the map is defined
        # (at least one float step: beyond ~1e10, low + 1e-6 rounds back to low and the map divides by 0)
        self.high[flat] = np.maximum(self.low[flat] + 1e-6, np.nextafter(self.low[flat], np.inf))
        return self

    def _fitted(self):
        if self.low is None:
            raise ValueError("this PerDimQuantizer is not fitted yet; call fit(embeddings) first")

    def quantize(self, x) -> np.ndarray:
        self._fitted()
        arr = _check_embeddings(x, dim=self.low.shape[0])
        return np.clip(np.floor((arr - self.low) / (self.high - self.low) * 256.0), 0, 255).astype(np.uint8)

    def dequantize(self, q) -> np.ndarray:
        self._fitted()
        return (self.low + (np.asarray(q, np.float64) + 0.5) * (self.high - self.low) / 256.0).astype(np.float32)

    def to_dict(self) -> dict:
        self._fitted()
        return {"kind": self.kind, "low": self.low.tolist(), "high": self.high.tolist()}


def quantizer_from_dict(d: dict):
    """Rebuild the quantizer recorded in a manifest."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == GlobalQuantizer.kind:
        return GlobalQuantizer()
    if kind == PerDimQuantizer.kind:
        return PerDimQuantizer(d["low"], d["high"])
    raise ValueError(f"unknown quantizer description {d!r}; expected kind 'global' or 'per_dim'")
