"""Any image a user hands us -> the uint8 (size, size, 3) RGB array a CIFAR model takes.

Owns `load_image` (shared by `fastcifar predict`, the demo and image-folder datasets, so training and serving see
the same pixels) and `find_images` (walking the paths given on the command line). Every failure a user can cause
(missing file, not an image, truncated or corrupt data, a decompression bomb, an unconvertible colour mode) becomes
one `FastCifarError` naming the input. The conversion a user sees: docs/data.md, "Image folders".
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from fastcifar.errors import FastCifarError



def _describe(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return getattr(source, "filename", None) or getattr(source, "name", None) or f"<{type(source).__name__}>"


def _open(source, name: str):
    """A lazily-loaded PIL image from a path, bytes, a file object or an image; errors say what went wrong."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            raise FastCifarError(f"{name} is a directory, not an image")
        if not path.exists():
            raise FastCifarError(f"{name}: no such file")
        source = path
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise FastCifarError(f"{name} is not an image Pillow can read (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as exc:
        raise FastCifarError(f"{name} is refused as a likely decompression bomb ({exc})") from None
    except (OSError, ValueError) as exc:
        raise FastCifarError(f"cannot open {name}: {exc}") from None


# ---------------------------------------------------------------------------------------------- colour modes


def _over_white(image):
    from PIL import Image

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit(image):
    from PIL import Image

    # Pillow's own I;16 -> L conversion clips at 255 instead of scaling: a 16-bit scan would come out white.
    grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _float_grey(image):
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0  # 0-1 floats vs 0-255 floats
    grey = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


_MODE_CONVERTERS: dict[str, Callable] = {
    "RGB": lambda image: image,
    "RGBA": _over_white, "RGBa": _over_white, "LA": _over_white, "La": _over_white, "PA": _over_white,
    "I;16": _sixteen_bit, "I;16L": _sixteen_bit, "I;16B": _sixteen_bit, "I;16N": _sixteen_bit, "I": _sixteen_bit,
    "F": _float_grey,
}


def _to_rgb(image, name: str):
    if image.mode == "P" and "transparency" in image.info:
        return _over_white(image)
    convert = _MODE_CONVERTERS.get(image.mode, lambda im: im.convert("RGB"))
    try:
        return convert(image)
    except (ValueError, OSError) as exc:
        raise FastCifarError(f"{name}: cannot convert colour mode {image.mode} to RGB ({exc})") from None


# ---------------------------------------------------------------------------------------------- public


def load_image(source, size: int = 32) -> np.ndarray:
    """Read `source` (path, bytes, file object or PIL image) as uint8 RGB (size, size, 3): the first frame, a JPEG
    decoded at a reduced scale (never below `size`), EXIF orientation applied, transparency over white, 16-bit and
    float greyscale scaled to 0-255 (other modes through Pillow's RGB conversion), then the largest centred square
    resized to `size` (bicubic; an image already `size` x `size` passes through bit for bit)."""
    from PIL import Image

    # Pillow warns (with its own file path) between 89 and 179 megapixels and refuses above; the refusal is
    # handled below as one message, and an image in the warning band is simply decoded and shrunk to `size`.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _load_image(source, size)


def _load_image(source, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    name = _describe(source)
    image = _open(source, name)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if image.format == "JPEG":
            image.draft(None, (size, size))  # decode at a reduced scale, never below `size`
        image.load()
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image, name)
        width, height = image.size
        side = min(width, height)
        if side < 1:
            raise FastCifarError(f"{name} has no pixels ({width}x{height})")
        left, top = (width - side) // 2, (height - side) // 2
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                             reducing_gap=3.0)
        pixels = np.array(image, dtype=np.uint8)
    except FastCifarError:
        raise
    except Image.DecompressionBombError as exc:
        raise FastCifarError(f"{name} is refused as a likely decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated/corrupt data surfaces at load()
        raise FastCifarError(f"{name} is corrupt or truncated ({exc})") from None
    if pixels.shape != (size, size, 3):  # defensive: a decoder that ignored the conversion
        raise FastCifarError(f"{name} decoded to an unexpected shape {pixels.shape}")
    return pixels


def image_extensions() -> frozenset[str]:
    """Lower-case suffixes of every format this Pillow can open (used when walking directories)."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand `paths`: files are kept as given, directories are walked (sorted, recursive, image suffixes only).

    Returns (files, problems) where problems are (path, message) for paths that exist nowhere or hold no image.
    """
    suffixes = image_extensions()
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                problems.append((str(raw), f"{raw}: directory holds no image files"))
            files.extend(found)
        elif path.exists():
            files.append(path)  # an explicit file is always tried, whatever its suffix
        else:
            problems.append((str(raw), f"{raw}: no such file or directory"))
    return files, problems
