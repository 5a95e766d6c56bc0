"""Folder ingest: good images in, broken and foreign files reported, EXIF orientation applied."""

import io

import numpy as np
import pytest
from PIL import Image

from clipbranches_widgets.build.ingest import load_image, scan_folder


def save(path, size=(40, 20), color=(200, 30, 30), fmt=None, exif_orientation=None):
    im = Image.new("RGB", size, color)
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    im.save(path, format=fmt, **kwargs)


def test_scan_folder_reads_good_files_and_reports_the_rest(tmp_path):
    save(tmp_path / "a.jpg")
    save(tmp_path / "b.png", color=(0, 0, 255))
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "c.webp", size=(30, 30))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = io.BytesIO()
    Image.new("RGB", (50, 50)).save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:40])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "captions.csv").write_text("filename,caption\na.jpg,a red box\nsub/c.webp,a square\n")
    res = scan_folder(tmp_path, captions_csv=tmp_path / "captions.csv", progress=False)
    assert res.paths == ["a.jpg", "b.png", "sub/c.webp"]
    assert res.captions == ["a red box", "b", "a square"]
    assert sorted(s.path for s in res.skipped) == ["broken.jpg", "notes.txt", "truncated.png"]
    assert "3 images ingested" in res.report() and "broken.jpg" in res.report()
    thumb = Image.open(io.BytesIO(res.thumbnails[1]))
    assert thumb.format == "JPEG" and np.asarray(thumb)[5, 5, 2] > 200  # the blue image stays blue
    assert res.sizes[0] == (40, 20)


def test_exif_orientation_and_aspect_ratio(tmp_path):
    save(tmp_path / "rot.jpg", size=(40, 20), exif_orientation=6)  # "rotate 90 CW" on display
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    save(tmp_path / "wide.png", size=(400, 100))
    assert load_image(tmp_path / "wide.png", max_side=160).size == (160, 40)


def test_ingest_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        scan_folder(tmp_path / "missing", progress=False)
    with pytest.raises(ValueError, match="no usable image"):
        scan_folder(tmp_path, progress=False)  # empty folder
    (tmp_path / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable image"):
        scan_folder(tmp_path, progress=False)
    save(tmp_path / "ok.png")
    (tmp_path / "caps.csv").write_text("name,text\nok.png,hi\n")
    with pytest.raises(ValueError, match="'filename' and 'caption'"):
        scan_folder(tmp_path, captions_csv=tmp_path / "caps.csv", progress=False)


def test_fifos_and_looping_links_are_reported_never_opened(tmp_path):
    import os

    save(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path, target_is_directory=True)  # a folder loop
    res = scan_folder(tmp_path, progress=False)
    assert res.paths == ["a.jpg"]
    reasons = {s.path: s.reason for s in res.skipped}
    assert reasons == {"pipe.jpg": "not a regular file", "loop.jpg": "a broken or looping link",
                       "dangling.png": "a broken or looping link"}
    assert "pipe.jpg" in res.report()
