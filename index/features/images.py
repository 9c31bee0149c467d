"""Images: opening (fully decoded RGB, with the decompression-bomb guard), the Kaggle phash
and its codes (16 hex digits <-> (n, 8) uint8). Imports only `index.errors`/`progress`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from index.errors import ImageError
from index.progress import progress

#: Images above this many pixels are refused (decompression-bomb guard), ~ 8k x 8k.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

ImageInput = str | Path | bytes | Image.Image


def open_image(src: ImageInput) -> Image.Image:
    """Open and fully decode an image as RGB.

    Raises:
        ImageError: missing file, not an image, truncated data, or over `MAX_IMAGE_PIXELS`.
    """
    name = "<bytes>" if isinstance(src, bytes) else str(src)
    limit = f"the {MAX_IMAGE_PIXELS:,}-pixel limit (decompression bomb guard)"
    try:
        if isinstance(src, Image.Image):
            img = src
        elif isinstance(src, bytes):
            img = Image.open(io.BytesIO(src))
        else:
            img = Image.open(src)
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageError(f"{name}: image of {w}x{h} pixels is over {limit}")
        img.load()
        return img.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{name}: image file not found") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image is over {limit}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a readable image (unknown image format)") from e
    except (OSError, ValueError, SyntaxError) as e:
        # PIL's messages can name its file object (`<_io.BytesIO object at 0x...>`)
        why = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the image", str(e)) or type(e).__name__
        raise ImageError(f"{name}: not a readable image ({why})") from e


def compute_phash(image: ImageInput) -> str:
    """imagehash's 64-bit perceptual hash as 16 hex digits (as the Kaggle column); a
    decoded image is hashed as it is, anything else is opened first."""
    import imagehash

    img = image if isinstance(image, Image.Image) else open_image(image)
    return str(imagehash.phash(img))


def phash_codes(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-digit phash strings -> (n, 8) uint8 codes and (n,) validity mask."""
    n = len(hashes)
    codes = np.zeros((n, 8), np.uint8)
    valid = np.zeros(n, bool)
    for i, h in enumerate(hashes):
        if h and len(h) == 16:
            try:
                codes[i] = np.frombuffer(bytes.fromhex(h), np.uint8)
                valid[i] = True
            except ValueError:
                pass
    return codes, valid


def phash_hex(codes: np.ndarray, valid: np.ndarray) -> list[str]:
    """(n, 8) uint8 codes and (n,) validity -> 16-hex-digit strings ("" where invalid)."""
    return [bytes(c).hex() if v else "" for c, v in zip(codes, valid, strict=True)]


def fill_phash(
    hashes: list[str], images: list[str] | None, show_progress: bool = False
) -> tuple[list[str], int]:
    """Given phashes (one per row, "" where none), computing the missing ones from images.

    Returns:
        The hashes ("" where none) and the count of images that could not be read.
    """
    out = list(hashes)
    failed = 0
    if images is None:
        return out, 0
    assert len(images) == len(out), (len(images), len(out))
    todo = [i for i in range(len(out)) if not out[i] and images[i]]
    for i in progress(todo, desc="phash", unit="img", disable=not show_progress):
        try:
            out[i] = compute_phash(images[i])
        except ImageError:
            failed += 1
    return out, failed
