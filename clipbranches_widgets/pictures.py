"""Opening pictures the same way everywhere: builds, uploads and picture queries.

A picture is decoded with a pixel budget (a 17 KB PNG of 12000 x 12000 pixels would take 1.1 GB),
turned upright by its EXIF orientation, and converted to 8-bit RGB with 16-bit and float pictures
scaled rather than clipped (a 16-bit PNG would otherwise turn all white). Query pictures go through
the same steps as catalog pictures, so an item's own photo finds the item.
"""

from __future__ import annotations

import numpy as np

#: the largest picture decoded, in pixels (50 megapixels: a 12000 x 12000 picture is refused)
MAX_PIXELS = 50_000_000
#: the largest upload accepted by the app, in bytes
MAX_UPLOAD_BYTES = 50 * 2**20


def to_rgb(image):
    """An opened PIL image, upright and 8-bit RGB (16-bit and float modes scaled, not clipped)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, np.float64)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def open_picture(source, *, max_side: int | None = None, name: str | None = None):
    """Decode a picture (a path or a binary file object) as upright 8-bit RGB, within MAX_PIXELS.

    ``max_side`` shrinks it (JPEGs are decoded at a reduced scale directly). Raises ValueError for
    a picture over the budget; PIL's own errors for files that are not pictures.
    """
    from PIL import Image

    with Image.open(source) as im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"{name or 'the picture'} is {width} x {height} pixels; at most "
                             f"{MAX_PIXELS / 1e6:.0f} megapixels are decoded")
        if max_side is not None:
            im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        im.load()  # decode now, so truncated files fail here and not later
        image = to_rgb(im)
    if max_side is not None:
        image.thumbnail((max_side, max_side))  # keeps the aspect ratio
    return image
