"""The shapes world: seed-addressable images of coloured shapes with exact metadata.

An image is a pure function of ``(seed, index)`` (and the world's settings): its random layout is
drawn first from ``np.random.default_rng([seed, index])`` by :meth:`ShapesWorld._layout`, which both
:meth:`ShapesWorld.metadata` and :meth:`ShapesWorld.image` use, so the metadata is exactly what is
drawn and never needs pixels.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from .captions import rich_caption
from .vocab import BACKGROUNDS, COLOR_NAMES, COLORS, SHAPES, SIZE_RADII, SIZES

_ROTATION_JITTER = 0.25  # radians
_PLACEMENT_TRIES = 40
_GAP = 2.0  # minimum free pixels between two objects (at 64 px)

# Unit outlines (radius 1, pointing up, y down), rotated and scaled per object.
_ANGLES10 = -math.pi / 2 + np.arange(10) * (2 * math.pi / 10)
_STAR = np.stack([np.cos(_ANGLES10), np.sin(_ANGLES10)], 1) * np.where(np.arange(10) % 2, 0.45, 1.0)[:, None]
_w = 0.34  # half-width of a cross arm
_CROSS = np.array([(-_w, -1), (_w, -1), (_w, -_w), (1, -_w), (1, _w), (_w, _w), (_w, 1),
                   (-_w, 1), (-_w, _w), (-1, _w), (-1, -_w), (-_w, -_w)], dtype=float)
_t = np.linspace(0, 2 * math.pi, 28, endpoint=False)
_HEART = np.stack([16 * np.sin(_t) ** 3,
                   -(13 * np.cos(_t) - 5 * np.cos(2 * _t) - 2 * np.cos(3 * _t) - np.cos(4 * _t))], 1)
_HEART = (_HEART - (_HEART.max(0) + _HEART.min(0)) / 2)
_HEART /= np.abs(_HEART).max()
_ANGLES3 = -math.pi / 2 + np.arange(3) * (2 * math.pi / 3)
_TRIANGLE = np.stack([np.cos(_ANGLES3), np.sin(_ANGLES3)], 1)
_ANGLES4 = math.pi / 4 + np.arange(4) * (math.pi / 2)
_SQUARE = np.stack([np.cos(_ANGLES4), np.sin(_ANGLES4)], 1) * 0.92
_DIAMOND = np.array([(0, -1), (0.65, 0), (0, 1), (-0.65, 0)], dtype=float)
_OUTLINES = {"star": _STAR, "cross": _CROSS, "heart": _HEART, "triangle": _TRIANGLE,
             "square": _SQUARE, "diamond": _DIAMOND}


class ShapesWorld:
    """A generated catalog of coloured shapes on low-saturation backgrounds.

    Parameters
    ----------
    seed : int
        Selects the world; image ``i`` depends only on ``(seed, i)`` and the settings below.
    objects_per_image : dict
        Probabilities of 1, 2, 3 objects, e.g. ``{1: 1.0}`` (default) or ``{1: .4, 2: .3, 3: .3}``.
        An object that does not fit without overlap after 40 tries is dropped.
    image_size : int
        Side in pixels (radii and stripe periods scale with it; the recipe is at 64).
    supersample : int
        Draw at ``supersample`` times the size, then downsample (anti-aliased, slower).
    """

    def __init__(self, seed: int = 777, objects_per_image: dict | None = None,
                 image_size: int = 64, supersample: int = 1):
        if objects_per_image is None:
            objects_per_image = {1: 1.0}
        try:  # keys may be strings (JSON, the CLI's --objects)
            objects_per_image = {int(k): float(v) for k, v in objects_per_image.items()}
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"objects_per_image must map counts >= 1 to probabilities, got "
                             f"{objects_per_image!r}") from None
        counts = sorted(int(k) for k in objects_per_image)
        probs = np.array([float(objects_per_image[k]) for k in counts])
        if not counts or counts[0] < 1 or probs.min() < 0 or probs.sum() <= 0:
            raise ValueError(f"objects_per_image must map counts >= 1 to probabilities, got {objects_per_image!r}")
        if counts[-1] > len(SHAPES) * len(COLOR_NAMES):
            raise ValueError(f"at most {len(SHAPES) * len(COLOR_NAMES)} objects per image")
        if int(image_size) < 16 or int(supersample) < 1:
            raise ValueError("image_size must be >= 16 and supersample >= 1")
        self.seed = int(seed)
        self.objects_per_image = {k: float(p) for k, p in zip(counts, probs / probs.sum())}
        self.image_size = int(image_size)
        self.supersample = int(supersample)
        self._counts = np.array(counts)
        self._cum = np.cumsum(probs / probs.sum())
        self._grid = None  # cached pixel coordinates

    def __repr__(self) -> str:
        return (f"ShapesWorld(seed={self.seed}, objects_per_image={self.objects_per_image}, "
                f"image_size={self.image_size}, supersample={self.supersample})")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_grid"] = None
        return state

    # ------------------------------------------------------------------ layout
    def _layout(self, i: int):
        """Draw image ``i``'s random layout; returns ``(layout, rng)`` (rng is left for pixel noise)."""
        rng = np.random.default_rng([self.seed, int(i)])
        scale = self.image_size / 64.0
        size = self.image_size

        n = int(self._counts[min(int(np.searchsorted(self._cum, rng.random(), side="right")), len(self._counts) - 1)])

        bg_kind = BACKGROUNDS[int(rng.integers(4))]
        tone = _low_saturation_tone(rng)
        bg = {"kind": bg_kind, "tone": tone}
        if bg_kind == "striped":
            bg["orientation"] = int(rng.integers(3))  # horizontal, vertical, diagonal
            bg["period"] = float(rng.uniform(6, 12)) * scale
            delta = int(rng.integers(45, 91))
            # lighter or darker stripes, whichever fits in 0..255 (random when both do)
            if tone.mean() + delta > 255:
                sign = -1
            elif tone.mean() - delta < 0:
                sign = 1
            else:
                sign = 1 if rng.random() < 0.5 else -1
            bg["tone2"] = np.clip(tone + sign * delta, 0, 255)
        elif bg_kind == "gradient":
            bg["angle"] = float(rng.uniform(0, 2 * math.pi))
            bg["tone2"] = _low_saturation_tone(rng)
        elif bg_kind == "noisy":
            bg["sigma"] = float(rng.uniform(25, 40))

        objects = []
        used = set()
        for _ in range(n):
            while True:
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
                if (color, shape) not in used:
                    break
            obj_size = SIZES[int(rng.integers(2))]
            lo, hi = SIZE_RADII[obj_size]
            r = float(rng.uniform(lo, hi)) * scale
            rotation = float(rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER))
            rgb = np.clip(np.array(COLORS[color]) + rng.integers(-15, 16, 3), 0, 255)
            margin = r + 1.0
            for _try in range(_PLACEMENT_TRIES):
                cx, cy = rng.uniform(margin, size - margin, 2)
                if all((cx - o["cx"]) ** 2 + (cy - o["cy"]) ** 2 >= (r + o["r"] + _GAP * scale) ** 2
                       for o in objects):
                    break
            else:
                continue  # does not fit: dropped
            used.add((color, shape))
            objects.append({"shape": shape, "color": color, "size": obj_size, "r": r,
                            "rotation": rotation, "rgb": tuple(int(v) for v in rgb),
                            "cx": float(cx), "cy": float(cy)})
        return {"background": bg, "objects": objects}, rng

    # ---------------------------------------------------------------- metadata
    def metadata(self, i: int) -> dict:
        """``{"background": str, "objects": [{"shape", "color", "size", "x", "y"}]}`` of image ``i``.

        ``x``, ``y`` are the object's centre normalised to [0, 1] (x right, y down).
        """
        layout, _ = self._layout(i)
        return _public_metadata(layout, self.image_size)

    def caption(self, i: int, rng: np.random.Generator | None = None) -> str:
        """A "rich" caption of image ``i``; ``rng=None`` gives the canonical (deterministic) one."""
        if rng is None:
            rng = np.random.default_rng([self.seed, int(i), 1])
        return rich_caption(self.metadata(i), rng)

    def items(self, n: int, start: int = 0) -> pa.Table:
        """Metadata of images ``start .. start+n-1`` as a table: id, caption, background, objects."""
        ids, captions, backgrounds, objects = [], [], [], []
        for i in range(start, start + int(n)):
            meta = self.metadata(i)
            ids.append(i)
            captions.append(rich_caption(meta, np.random.default_rng([self.seed, i, 1])))
            backgrounds.append(meta["background"])
            objects.append(meta["objects"])
        return pa.table({
            "id": pa.array(ids, pa.int64()),
            "caption": pa.array(captions, pa.string()),
            "background": pa.array(backgrounds, pa.string()),
            "objects": pa.array(objects, ITEMS_SCHEMA.field("objects").type),
        }, schema=ITEMS_SCHEMA)

    # ------------------------------------------------------------------ pixels
    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``uint8`` array (image_size, image_size, 3)."""
        layout, rng = self._layout(i)
        ss = self.supersample
        bg = self._background(layout["background"], rng)
        if ss > 1:
            bg = np.repeat(np.repeat(bg, ss, 0), ss, 1)
        img = Image.fromarray(bg)
        draw = ImageDraw.Draw(img)
        for o in layout["objects"]:
            _draw_object(draw, o, ss)
        if ss > 1:
            img = img.reduce(ss)
        return np.asarray(img)

    def images(self, start: int, stop: int, n_jobs: int = 1, chunk_size: int = 2000) -> np.ndarray:
        """Images ``start .. stop-1`` as (n, H, W, 3) uint8; ``n_jobs > 1`` uses processes (same result)."""
        n = max(0, int(stop) - int(start))
        out = np.empty((n, self.image_size, self.image_size, 3), np.uint8)
        if n_jobs <= 1 or n < 2:
            for k in range(n):
                out[k] = self.image(start + k)
            return out
        chunk = max(1, min(int(chunk_size), math.ceil(n / n_jobs)))
        bounds = [(s, min(s + chunk, start + n)) for s in range(start, start + n, chunk)]
        with ProcessPoolExecutor(max_workers=int(n_jobs)) as pool:
            for (s, e), arr in zip(bounds, pool.map(_images_chunk, [(self, s, e) for s, e in bounds])):
                out[s - start:e - start] = arr
        return out

    def _background(self, bg: dict, rng: np.random.Generator) -> np.ndarray:
        size = self.image_size
        kind, tone = bg["kind"], bg["tone"]
        if kind == "plain":
            return np.broadcast_to(tone.astype(np.uint8), (size, size, 3)).copy()
        if self._grid is None:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            self._grid = (xx, yy)
        xx, yy = self._grid
        if kind == "striped":
            coord = (yy, xx, xx + yy)[bg["orientation"]]
            second = (np.floor(coord / (bg["period"] / 2)) % 2).astype(bool)
            return np.where(second[..., None], bg["tone2"], tone).astype(np.uint8)
        if kind == "gradient":
            a = bg["angle"]
            proj = (xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
            return (tone + t[..., None] * (bg["tone2"] - tone) + 0.5).astype(np.uint8)
        # noisy: luminance noise shared by the three channels, so the background stays grey-ish
        noise = rng.normal(0.0, bg["sigma"], (size, size, 1)).astype(np.float32)
        return np.clip(tone + noise, 0, 255).astype(np.uint8)


ITEMS_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("caption", pa.string()),
    ("background", pa.string()),
    ("objects", pa.list_(pa.struct([("shape", pa.string()), ("color", pa.string()), ("size", pa.string()),
                                    ("x", pa.float32()), ("y", pa.float32())]))),
])


def _low_saturation_tone(rng: np.random.Generator) -> np.ndarray:
    grey = int(rng.integers(35, 216))
    return np.clip(grey + rng.integers(-18, 19, 3), 0, 255).astype(np.float32)


def _public_metadata(layout: dict, image_size: int) -> dict:
    return {
        "background": layout["background"]["kind"],
        "objects": [{"shape": o["shape"], "color": o["color"], "size": o["size"],
                     "x": o["cx"] / image_size, "y": o["cy"] / image_size}
                    for o in layout["objects"]],
    }


def world_spec(world: "ShapesWorld") -> dict:
    """The manifest entry that lets a catalog render this world's pictures on demand."""
    return {"source": "demo_world", "seed": world.seed, "image_size": world.image_size,
            "objects_per_image": {str(k): v for k, v in world.objects_per_image.items()}}


#: the largest picture a manifest may ask the demo world to render (a hostile 200000 would allocate 596 GiB)
MAX_IMAGE_SIZE = 1024


def world_from_spec(spec: dict) -> "ShapesWorld":
    """The world a manifest's spec names, its sizes checked before anything is allocated."""
    size, seed = spec.get("image_size"), spec.get("seed")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"demo world image_size must be an integer in 16..{MAX_IMAGE_SIZE}; got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"demo world seed must be an integer; got {seed!r}")
    return ShapesWorld(seed=seed, image_size=size, objects_per_image=spec.get("objects_per_image"))


def world_of(catalog) -> "ShapesWorld | None":
    """The world a demo catalog was generated from (its ground truth), or None for other catalogs."""
    source = getattr(catalog, "thumbnails", None)
    return source.world if isinstance(source, WorldThumbnails) else None


class WorldThumbnails:
    """A catalog's tiles rendered from the demo world (nothing stored: the world is seed-addressable)."""

    pictures = True

    def __init__(self, world: "ShapesWorld"):
        self.world = world

    def thumbnail(self, i: int) -> bytes:
        from ..catalog.thumbnails import jpeg

        return jpeg(Image.fromarray(self.world.image(i)), quality=90)


def thumbnail_source(spec: dict) -> WorldThumbnails:
    """The catalog's thumbnail generator hook (``catalog.thumbnails.GENERATORS["demo_world"]``)."""
    return WorldThumbnails(world_from_spec(spec))


def _draw_object(draw: ImageDraw.ImageDraw, o: dict, ss: int) -> None:
    r, cx, cy = o["r"] * ss, o["cx"] * ss, o["cy"] * ss
    fill = o["rgb"]
    shape = o["shape"]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(1, round(0.38 * r)))
    else:
        a = o["rotation"]
        c, s = math.cos(a), math.sin(a)
        pts = _OUTLINES[shape] @ np.array([[c, s], [-s, c]]) * r + (cx, cy)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)


def _images_chunk(args) -> np.ndarray:
    world, start, stop = args
    return world.images(start, stop, n_jobs=1)
