"""Concepts over the shapes world ("a red star", "a striped background") and their exact members."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .vocab import BACKGROUND_WORDS, COLOR_NAMES, SHAPES, SIZES

_KEYS = ("color", "shape", "size", "background")


def parse_concept(text: str) -> dict:
    """Parse a query such as "a large red star on stripes" into
    ``{"color", "shape", "size", "background"}`` (None where absent).

    Raises ValueError naming the text if it has no known attribute word or names two values of one
    attribute ("a red blue star").
    """
    concept = dict.fromkeys(_KEYS)
    words = re.findall(r"[a-z]+", str(text).lower())
    for w in words:
        if w in COLOR_NAMES:
            key, value = "color", w
        elif w in SHAPES:
            key, value = "shape", w
        elif w in SIZES:
            key, value = "size", w
        elif w in BACKGROUND_WORDS:
            key, value = "background", BACKGROUND_WORDS[w]
        else:
            continue
        if concept[key] is not None and concept[key] != value:
            raise ValueError(f"concept {text!r} names two {key}s: {concept[key]!r} and {value!r}")
        concept[key] = value
    if all(v is None for v in concept.values()):
        raise ValueError(f"concept {text!r} names no colour, shape, size or background")
    return concept


def all_color_shape_concepts() -> list[str]:
    """The 64 colour+shape queries, "a red circle" ... "a pink ring"."""
    return [f"a {c} {s}" for c in COLOR_NAMES for s in SHAPES]


def concept_mask(items, concept) -> np.ndarray:
    """Exact members of a concept: a bool array, one entry per item.

    ``items`` is a ``ShapesWorld.items`` table (or any table with ``background`` and ``objects``
    columns) or a list of metadata dicts; ``concept`` a dict from :func:`parse_concept` or a query
    string. An item matches when some single object has every given colour/shape/size, and its
    background matches if one is given.
    """
    if isinstance(concept, str):
        concept = parse_concept(concept)
    unknown = set(concept) - set(_KEYS)
    if unknown:
        raise ValueError(f"unknown concept keys {sorted(unknown)}; expected {list(_KEYS)}")
    if isinstance(items, pa.Table):
        backgrounds = items.column("background").to_numpy(zero_copy_only=False).astype(str)
        objects = items.column("objects").combine_chunks()
        parents = pc.list_parent_indices(objects).to_numpy()
        flat = pc.list_flatten(objects)
        fields = {k: flat.field(k).to_numpy(zero_copy_only=False).astype(str) for k in ("color", "shape", "size")}
    else:
        items = list(items)
        backgrounds = np.array([m["background"] for m in items], dtype=str)
        parents = np.array([i for i, m in enumerate(items) for _ in m["objects"]], dtype=np.int64)
        fields = {k: np.array([o[k] for m in items for o in m["objects"]], dtype=str)
                  for k in ("color", "shape", "size")}
    n = len(backgrounds)
    obj_ok = np.ones(len(parents), dtype=bool)
    for k in ("color", "shape", "size"):
        if concept.get(k) is not None:
            obj_ok &= fields[k] == concept[k]
    if any(concept.get(k) is not None for k in ("color", "shape", "size")):
        mask = np.bincount(parents[obj_ok], minlength=n)[:n] > 0
    else:
        mask = np.ones(n, dtype=bool)
    if concept.get("background") is not None:
        mask &= backgrounds == concept["background"]
    return mask
