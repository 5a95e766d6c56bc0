"""Generated clustered uint8 catalogs and labelled tasks for the engine's tests, benchmarks and demo.

Codes imitate the real pipeline: unit vectors in 32-d around cluster centres, quantized with the
global mapping ``q = clip(floor(127.5 x + 128), 0, 255)``. Cluster sizes follow a Zipf-like law, so
some concepts are rare (well under 1% of the catalog: selective models) and some common.
"""

from __future__ import annotations

import numpy as np


def clustered_blocks(n_rows: int, *, n_clusters: int = 200, dim: int = 32, noise: float = 0.1, seed: int = 0,
                     chunk: int = 1_000_000):
    """Yield (codes uint8 (m, dim), labels int32 (m,)) blocks of at most ``chunk`` rows, ``n_rows``
    in all: unit vectors around ``n_clusters`` centres (Zipf-like sizes), quantized like a catalog.
    Memory is bounded by one block, so 100M-row catalogs can be generated."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    p /= p.sum()
    for start in range(0, n_rows, chunk):
        m = min(chunk, n_rows - start)
        lab = rng.choice(n_clusters, size=m, p=p).astype(np.int32)
        z = centres[lab] + noise * rng.standard_normal((m, dim), dtype=np.float32)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        yield np.clip(np.floor(127.5 * z + 128.0), 0, 255).astype(np.uint8), lab


def clustered_catalog(n_rows: int, *, n_clusters: int = 200, dim: int = 32, noise: float = 0.1, seed: int = 0,
                      chunk: int = 1_000_000):
    """Return (codes uint8 (n, dim), labels int32 (n,)): :func:`clustered_blocks` in one array."""
    codes = np.empty((n_rows, dim), np.uint8)
    labels = np.empty(n_rows, np.int32)
    start = 0
    for block, lab in clustered_blocks(n_rows, n_clusters=n_clusters, dim=dim, noise=noise, seed=seed, chunk=chunk):
        codes[start:start + block.shape[0]] = block
        labels[start:start + block.shape[0]] = lab
        start += block.shape[0]
    return codes, labels


def labelled_task(codes, labels, cluster: int, *, n_labelled: int = 60, n_random_negatives: int = 500, seed: int = 0):
    """The app's training set: the ``n_labelled`` catalog rows nearest to the cluster's mean code
    (labelled by the truth, as a user would mark them) plus random catalog rows labelled 0."""
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(labels == cluster)
    centre = codes[rng.choice(members, min(256, len(members)), replace=False)].astype(np.float32).mean(axis=0)
    sample = rng.choice(codes.shape[0], size=min(codes.shape[0], 200_000), replace=False)
    d = ((codes[sample].astype(np.float32) - centre) ** 2).sum(axis=1)
    near = sample[np.argsort(d)[:n_labelled]]
    rest = np.setdiff1d(np.arange(codes.shape[0]), near)
    rand = rng.choice(rest, n_random_negatives, replace=False)
    ids = np.r_[near, rand]
    y = np.r_[(labels[near] == cluster).astype(np.int8), np.zeros(n_random_negatives, np.int8)]
    return ids, y
