"""Where a catalog's tiles come from: stored JPEGs, the user's image files, a generator, or text.

A catalog shows every item as a small JPEG. The source is chosen when the catalog opens:

1. ``thumbs.bin`` in the folder (written by a build from pictures): :class:`StoredThumbnails`;
2. a generator named in the manifest (``extra["thumbnails"]["source"]``), e.g. the demo world,
   which renders its pictures on demand: one of :data:`GENERATORS`;
3. the user's own files, ``extra["image_root"]`` (or ``open_catalog(path, image_root=...)``) joined
   with the items' ``image_path`` column: :class:`ImageFiles` (a clip-retrieval catalog whose
   pictures are on this machine);
4. otherwise a text tile with the item's caption, url or key: :class:`CaptionTiles`, so a catalog
   of 100M embeddings is usable without its pixels.

A picture that cannot be read (missing, broken) is shown as its text tile; it never breaks a page.
"""

from __future__ import annotations

import importlib
import io
import os
import textwrap
import weakref
from pathlib import Path

import numpy as np

#: tile side in pixels for pictures read from files and for text tiles
TILE_SIDE = 160
#: generators a manifest may name; (module, factory) imported only when a catalog asks for one, so the
#: catalog code does not depend on them. A factory takes the manifest's thumbnail spec.
GENERATORS = {"demo_world": ("clipbranches_widgets.demo.world", "thumbnail_source")}
#: item columns a text tile shows, first found wins
TEXT_COLUMNS = ("caption", "title", "url", "key", "image_path")


def jpeg(image, quality: int = 85) -> bytes:
    """A PIL image as JPEG bytes (RGB)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class StoredThumbnails:
    """JPEG bytes stored back to back in ``thumbs.bin``, located by ``thumbs.idx.npy`` offsets.

    The file is opened once and kept open, so an opened catalog keeps reading the thumbnails it was
    opened with even if the folder is rebuilt in place meanwhile.
    """

    pictures = True

    def __init__(self, path: Path, offsets: np.ndarray):
        self.path = Path(path)
        self.offsets = offsets
        self._file = open(self.path, "rb")
        weakref.finalize(self, self._file.close)

    def thumbnail(self, i: int) -> bytes:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.pread(self._file.fileno(), stop - start, start)  # positional: safe across threads


def _cell(items, i: int, column: str):
    """One value of an items table (a pyarrow Table, or a catalog's ItemsFile read by row group)."""
    return items.take([i]).column(column)[0].as_py()


class CaptionTiles:
    """A text tile per item: its caption (or title, url, key, path), wrapped on a plain square."""

    pictures = False

    def __init__(self, items, side: int = TILE_SIDE):
        self.column = next((c for c in TEXT_COLUMNS if c in items.column_names), None)
        self.items = items
        self.side = side

    def text(self, i: int) -> str:
        value = None if self.column is None else _cell(self.items, i, self.column)
        return f"item {i}" if value in (None, "") else str(value)

    def thumbnail(self, i: int) -> bytes:
        from PIL import Image, ImageDraw

        tile = Image.new("RGB", (self.side, self.side), (236, 238, 242))
        lines = textwrap.wrap(self.text(i), width=max(8, self.side // 7))[: self.side // 14]
        ImageDraw.Draw(tile).multiline_text((6, 6), "\n".join(lines), fill=(40, 44, 52), spacing=2)
        return jpeg(tile)


class ImageFiles:
    """The user's picture files: ``root / items.image_path[i]``, shrunk to a tile on demand.

    Paths stay inside ``root`` (an item path with ``..`` or an absolute path is not followed);
    a file that is missing or not a picture gets its text tile instead.
    """

    pictures = True

    def __init__(self, root, items, side: int = TILE_SIDE):
        if "image_path" not in items.column_names:
            raise ValueError("an image root needs an image_path column in the catalog's items")
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"image root {self.root} is not a folder")
        self.items = items
        self.side = side
        self.fallback = CaptionTiles(items, side)

    def file(self, i: int) -> Path | None:
        rel = _cell(self.items, i, "image_path")
        if not rel:
            return None
        path = (self.root / rel).resolve()
        return path if path.is_relative_to(self.root) and path.is_file() else None

    def thumbnail(self, i: int) -> bytes:
        from PIL import Image, UnidentifiedImageError

        path = self.file(i)
        if path is None:
            return self.fallback.thumbnail(i)
        try:
            with Image.open(path) as im:
                im.thumbnail((self.side, self.side))
                return jpeg(im)
        except (OSError, UnidentifiedImageError, ValueError):
            return self.fallback.thumbnail(i)


def thumbnail_source(folder: Path, manifest: dict, items, offsets, image_root=None):
    """The tile source for an opened catalog (see the module docstring for the order)."""
    if offsets is not None:
        return StoredThumbnails(folder / "thumbs.bin", offsets)
    extra = manifest.get("extra") or {}
    spec = extra.get("thumbnails") or ({"source": "demo_world", **extra["demo_world"]} if "demo_world" in extra else None)
    if spec is not None:
        if spec.get("source") not in GENERATORS:
            raise ValueError(f"catalog {folder} names an unknown thumbnail generator {spec.get('source')!r}; "
                             f"known: {sorted(GENERATORS)}")
        module, factory = GENERATORS[spec["source"]]
        return getattr(importlib.import_module(module), factory)(spec)
    root = image_root if image_root is not None else extra.get("image_root")
    if root is not None:
        root = Path(root)
        return ImageFiles(root if root.is_absolute() else folder / root, items)
    return CaptionTiles(items)
