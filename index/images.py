"""Images: opening (fully decoded RGB, with the decompression-bomb guard) and the Kaggle
phash (a leaf module: it imports only `index.errors`)."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from index.errors import ImageError

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
