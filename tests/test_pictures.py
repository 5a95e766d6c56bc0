"""Pictures open the same way in builds, uploads and queries: upright, 8-bit, within a pixel budget."""

import io

import numpy as np
import pytest
from PIL import Image

from clipbranches_widgets.pictures import MAX_PIXELS, open_picture, to_rgb


def _png(image) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    return buf


def test_16_bit_pictures_are_scaled_not_clipped_to_white():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image = open_picture(_png(Image.fromarray(ramp)))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.min() == 0 and 250 <= pixels.max() <= 255
    assert 100 < pixels.mean() < 155  # a ramp, not all white (255) as convert("RGB") made it
    floats = to_rgb(Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)))
    assert np.asarray(floats).max() == 255 and np.asarray(floats).min() == 0


def test_exif_orientation_is_applied_to_query_pictures_too():
    wide = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif.tobytes())
    buf.seek(0)
    assert open_picture(buf).size == (40, 80)
    buf.seek(0)
    assert to_rgb(Image.open(buf)).size == (40, 80)  # the query path (QueryEncoder.encode_images)


def test_a_huge_picture_is_refused_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 100
    huge = _png(Image.new("1", (side, side)))  # a few KB on disk, gigabytes decoded
    assert len(huge.getvalue()) < 2_000_000
    with pytest.raises(ValueError, match=r"is \d+ x \d+ pixels; at most 50 megapixels"):
        open_picture(huge, name="bomb.png")


def test_the_app_refuses_oversized_uploads_and_names_bad_files(tiny_catalog):
    from clipbranches_widgets.pictures import MAX_UPLOAD_BYTES
    from clipbranches_widgets.widgets import SearchApp

    app = SearchApp(tiny_catalog, warm_up=False)
    app._guard(app._do_upload, [{"name": "big.png", "content": b"\0" * (MAX_UPLOAD_BYTES + 1)}])
    assert "big.png is 50 MB; uploads of at most 50 MB" in app.error.value
    app._guard(app._do_upload, [{"name": "notes.txt", "content": b"hello"}])
    assert "notes.txt is not a readable picture (UnidentifiedImageError)" in app.error.value
