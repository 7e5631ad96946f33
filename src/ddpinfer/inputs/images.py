"""Image files named by input records: found (a stat) while the inputs are read, decoded later.

``check_paths`` runs as each record is read, also in rank 0's preflight scan, so a missing image
stops the run (or is skipped) before any model work, named with the data file and line.
``load`` decodes on the task's background thread; a file that exists but does not decode fails
only its own input.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ImageError(RuntimeError):
    """An image file that cannot be opened or decoded; the message names the path."""


def check_paths(value: Any, folder: Path) -> list[str]:
    """One path or a non-empty list of them, each an existing file; relative paths are resolved
    against ``folder`` (the data file's). Returns the resolved paths."""
    raw = [value] if isinstance(value, str) else value
    if not isinstance(raw, list) or not raw:
        kind = "null" if value is None else type(value).__name__
        raise ValueError(f"is {kind}, expected an image path or a non-empty list of paths")
    paths = []
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{item!r} is not an image path")
        path = Path(item).expanduser()
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise ValueError(f"image {item!r} not found (looked for {path})")
        paths.append(str(path))
    return paths


def load(paths: Sequence[str]) -> list[Any]:
    """Decode each image fully, as RGB (Pillow opens lazily: ``convert`` forces the decode)."""
    from PIL import Image

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"image {path}: cannot decode it ({type(e).__name__}: {e})") from e
    return images
