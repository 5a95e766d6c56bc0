"""Ingest a folder of the user's images: what a catalog build reads before embedding.

``scan_folder(folder)`` walks it (sorted, recursive), opens every file with an image extension,
applies its EXIF orientation, and returns the good images' paths, captions and thumbnails plus a
report of every file that was skipped and why (unreadable, truncated, not an image, unsupported
extension). A broken file never stops the build.

Captions come from an optional CSV (``filename,caption``; filename relative to the folder); items
without one get their file stem ("IMG_0042"), so text search still has something to show.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..pictures import open_picture

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class IngestResult:
    """paths (relative to the folder, str), captions, thumbnails (JPEG bytes), sizes ((w, h) after
    EXIF orientation) for every good image, in sorted path order; skipped: files left out and why."""

    folder: Path
    paths: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    thumbnails: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def report(self) -> str:
        """Human-readable summary, e.g. for a notebook cell or the CLI."""
        lines = [f"{len(self.paths)} images ingested from {self.folder}, {len(self.skipped)} files skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def read_captions(csv_path) -> dict[str, str]:
    """``{filename: caption}`` from a CSV with a header holding ``filename`` and ``caption`` columns."""
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"filename", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} needs a header with 'filename' and 'caption' columns; got {reader.fieldnames}")
        return {row["filename"].strip(): (row["caption"] or "").strip() for row in reader}


def load_image(path, *, max_side: int | None = None):
    """Open an image as upright 8-bit RGB within the pixel budget (:func:`~clipbranches_widgets.pictures.open_picture`)."""
    return open_picture(path, max_side=max_side, name=str(path))


def scan_folder(folder, *, captions_csv=None, thumb_side: int = 160, jpeg_quality: int = 85,
                progress: bool = True) -> IngestResult:
    """Read every image under ``folder``; see the module doc. Raises ValueError only for a missing
    folder, a bad captions CSV, or a folder with no usable image at all."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    captions = read_captions(captions_csv) if captions_csv is not None else {}
    result = IngestResult(folder)
    files = []
    for path in sorted(folder.rglob("*")):  # rglob does not follow symlinked folders: no loops
        if path.name.startswith(".") or path.is_dir():
            continue
        if not path.is_file():  # a FIFO, a socket, a device, a dangling or looping link: never opened
            kind = "a broken or looping link" if path.is_symlink() else "not a regular file"
            result.skipped.append(Skipped(path.relative_to(folder).as_posix(), kind))
            continue
        files.append(path)
    for path in tqdm(files, desc="reading images", disable=not progress, unit="file"):
        rel = path.relative_to(folder).as_posix()
        if captions_csv is not None and path.resolve() == Path(captions_csv).resolve():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            result.skipped.append(Skipped(rel, f"not an image extension ({path.suffix or 'none'})"))
            continue
        try:
            im = load_image(path)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            result.skipped.append(Skipped(rel, f"unreadable image: {exc}"))
            continue
        result.sizes.append(im.size)
        im.thumbnail((thumb_side, thumb_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg_quality)
        result.paths.append(rel)
        result.thumbnails.append(buf.getvalue())
        result.captions.append(captions.get(rel, path.stem))
    if not result.paths:
        raise ValueError(f"no usable image in {folder} ({len(result.skipped)} files skipped)\n" + result.report())
    return result
