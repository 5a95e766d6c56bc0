"""Captions of shapes-world images, and hard-negative captions for contrastive training.

The recipe: objects in shuffled order, a subset only with p=.25 when there are 2+ objects; each object
"a/an [size] colour shape [position]" (size p=.5, position p=.15); joined "A, B and C"; the
background as "... on <bg>" (p=.55) or "<bg> with ..." (p=.1); a prefix with p=.4.
"""

from __future__ import annotations

import numpy as np

from .vocab import BACKGROUND_PHRASES, COLOR_NAMES, PREFIXES, SHAPES, SIZES, article

_COLOR_SET = frozenset(COLOR_NAMES)
_SHAPE_SET = frozenset(SHAPES)
_SIZE_SET = frozenset(SIZES)


def position_phrase(x: float, y: float) -> str:
    """Where a centre (normalised x right, y down) lies on a 3x3 grid, e.g. "at the top left"."""
    row = ("top", None, "bottom")[min(int(y * 3), 2)]
    col = ("left", None, "right")[min(int(x * 3), 2)]
    if row and col:
        return f"at the {row} {col}"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the center"


def join_phrases(parts: list[str]) -> str:
    """["A"] -> "A"; ["A", "B"] -> "A and B"; ["A", "B", "C"] -> "A, B and C"."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def rich_caption(meta: dict, rng: np.random.Generator) -> str:
    """A randomly phrased true caption of an image's metadata (see the module docstring)."""
    objects = list(meta["objects"])
    order = rng.permutation(len(objects))
    objects = [objects[k] for k in order]
    if len(objects) >= 2 and rng.random() < 0.25:
        objects = objects[:int(rng.integers(1, len(objects)))]
    parts = []
    for o in objects:
        words = [o["size"]] if rng.random() < 0.5 else []
        words += [o["color"], o["shape"]]
        phrase = f"{article(words[0])} {' '.join(words)}"
        if rng.random() < 0.15:
            phrase += " " + position_phrase(o["x"], o["y"])
        parts.append(phrase)
    text = join_phrases(parts)
    u = rng.random()
    bg_phrase = BACKGROUND_PHRASES[meta["background"]][int(rng.integers(3))]
    if u < 0.55:
        text = f"{text} on {bg_phrase}"
    elif u < 0.65:
        text = f"{bg_phrase} with {text}"
    if rng.random() < 0.4:
        text = f"{PREFIXES[int(rng.integers(len(PREFIXES)))]} {text}"
    return text


def mentioned_objects(caption: str) -> list[dict]:
    """The objects a caption names: ``[{"color", "shape", "size" (or None)}]``, in order.

    Relies on the caption grammar: an object is "[size] colour shape".
    """
    words = [w.strip(",.").lower() for w in caption.split()]
    found = []
    for j, w in enumerate(words):
        if w in _SHAPE_SET:
            color = words[j - 1] if j >= 1 and words[j - 1] in _COLOR_SET else None
            size = words[j - 2] if color and j >= 2 and words[j - 2] in _SIZE_SET else None
            found.append({"color": color, "shape": w, "size": size})
    return found


def caption_is_true(caption: str, objects: list[dict]) -> bool:
    """Whether every object the caption names matches some object of the image."""
    for m in mentioned_objects(caption):
        if not any(o["shape"] == m["shape"]
                   and (m["color"] is None or o["color"] == m["color"])
                   and (m["size"] is None or o["size"] == m["size"]) for o in objects):
            return False
    return True


def fix_articles(caption: str) -> str:
    """Set each "a"/"an" to agree with the next word ("an orange", "a red")."""
    words = caption.split(" ")
    for j in range(len(words) - 1):
        if words[j] in ("a", "an"):
            words[j] = article(words[j + 1])
    return " ".join(words)


def hard_negative_caption(caption: str, objects: list[dict], rng: np.random.Generator) -> str | None:
    """A false caption one word substitution away from ``caption``, or None if none is found.

    With p=.5 one shape word is changed, with p=.3 two different colour words are swapped (the
    binding negative), otherwise one colour word is changed. A result still true of the image
    (``objects``: its metadata objects) is resampled, up to 10 tries; articles are then fixed.
    """
    words = caption.split(" ")
    cores = [w.rstrip(",.") for w in words]
    shape_pos = [j for j, w in enumerate(cores) if w in _SHAPE_SET]
    color_pos = [j for j, w in enumerate(cores) if w in _COLOR_SET]
    if not shape_pos and not color_pos:
        return None
    for _ in range(10):
        new = list(cores)
        u = rng.random()
        if u < 0.5 and shape_pos:
            j = shape_pos[int(rng.integers(len(shape_pos)))]
            others = [s for s in SHAPES if s != cores[j]]
            new[j] = others[int(rng.integers(len(others)))]
        elif u < 0.8 and len({cores[j] for j in color_pos}) >= 2:
            j, k = rng.choice(color_pos, 2, replace=False)
            if cores[j] == cores[k]:
                continue
            new[j], new[k] = cores[k], cores[j]
        elif color_pos:
            j = color_pos[int(rng.integers(len(color_pos)))]
            others = [c for c in COLOR_NAMES if c != cores[j]]
            new[j] = others[int(rng.integers(len(others)))]
        else:
            continue
        text = fix_articles(" ".join(n + w[len(c):] for n, w, c in zip(new, words, cores)))
        if text != caption and not caption_is_true(text, objects):
            return text
    return None
