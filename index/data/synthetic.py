"""Synthetic Shopee-like catalogues with known groups, for tests, demos and benchmarks.

Each product gets a title (brand, item, size, Indonesian/English filler) and a base picture
(coloured shapes); each listing of it rewrites the title (word order, filler, case) and
re-shoots the picture (crop, shift, colour, rotation, overlay text, JPEG re-encode).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from index.features.images import compute_phash

BRANDS = [
    "Wardah",
    "Emina",
    "Lemonilo",
    "Indomie",
    "Samsung",
    "Xiaomi",
    "Maybelline",
    "Pigeon",
    "Ultima",
    "Scarlett",
    "Somethinc",
    "Erigo",
    "Nivea",
    "Philips",
    "Miniso",
    "Oppo",
]
ITEMS = [
    "lipstick matte",
    "mie instant goreng",
    "serum wajah",
    "kabel data usb",
    "botol minum",
    "kaos polos",
    "masker wajah",
    "sabun cuci muka",
    "power bank",
    "tas selempang",
    "sepatu sneakers",
    "jam tangan",
    "sisir rambut",
    "lampu led",
    "headset bluetooth",
    "daster batik",
    "paper bag",
    "double tape",
    "celana jeans",
    "kopi bubuk",
]
SIZES = [
    "100ml",
    "250ml",
    "500ml",
    "1kg",
    "200gr",
    "400gr",
    "10pcs",
    "2pcs",
    "30cm",
    "1m",
    "XL",
    "",
]
FILLER = [
    "READY",
    "ORIGINAL",
    "murah",
    "promo",
    "COD",
    "bpom",
    "100% asli",
    "grosir",
    "free gift",
    "termurah",
    "best seller",
    "import",
    "new",
]


@dataclass(frozen=True)
class SyntheticSpec:
    """How many products, listings per product, and image size."""

    products: int = 20
    min_per_product: int = 2
    max_per_product: int = 5
    image_size: int = 96
    singletons: int = 0
    seed: int = 0


def _title(rng: np.random.Generator, brand: str, item: str, size: str) -> str:
    words = [brand, *item.split(), size] if size else [brand, *item.split()]
    if rng.random() < 0.3:
        i, j = rng.choice(len(words), 2, replace=False)
        words[i], words[j] = words[j], words[i]
    extra = list(rng.choice(FILLER, size=rng.integers(0, 3), replace=False))
    words = extra[: len(extra) // 2] + words + extra[len(extra) // 2 :]
    t = " ".join(w for w in words if w)
    return t.upper() if rng.random() < 0.15 else t


def base_picture(rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A product 'photo': background colour and a few coloured shapes."""
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=col)
        else:
            d.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=col)
    return img


def reshoot(rng: np.random.Generator, img: Image.Image, strength: float = 1.0) -> Image.Image:
    """Another seller's photo of the same product: crop, rotate, recolour, overlay, re-encode."""
    size = img.width
    m = int(size * 0.12 * strength)
    l, t, r, b = (int(v) for v in rng.integers(0, max(m, 1) + 1, 4))
    out = img.crop((l, t, size - r, size - b)).resize((size, size))
    out = out.rotate(float(rng.uniform(-12, 12) * strength), fillcolor=img.getpixel((0, 0)))
    out = ImageEnhance.Color(out).enhance(float(1 + rng.uniform(-0.3, 0.3) * strength))
    out = ImageEnhance.Brightness(out).enhance(float(1 + rng.uniform(-0.2, 0.2) * strength))
    if rng.random() < 0.5:
        d = ImageDraw.Draw(out)
        d.text(
            (int(rng.integers(0, size // 2)), int(rng.integers(0, size - 12))),
            "PROMO",
            fill=(255, 255, 255),
        )
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(60, 95)))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def make_catalogue(out: str | Path, spec: SyntheticSpec | None = None, images: bool = True) -> Path:
    """Write `out/listings.csv` (+ `out/images/`) with known `label_group`s; returns the CSV."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    groups = [
        (p, int(rng.integers(spec.min_per_product, spec.max_per_product + 1)))
        for p in range(spec.products)
    ]
    groups += [(spec.products + s, 1) for s in range(spec.singletons)]
    for p, count in groups:
        # Products share brands, items and sizes, so near-duplicate titles of different
        # products exist (same item, other size), as on a real marketplace.
        brand, item, size = (str(rng.choice(v)) for v in (BRANDS, ITEMS, SIZES))
        pic = base_picture(rng, spec.image_size)
        label = str(1000 + p)
        for _ in range(count):
            pid = f"train_{spec.seed}{len(rows):06d}"
            name = f"{pid}.jpg"
            shot = reshoot(rng, pic)
            if images:
                shot.save(root / "images" / name, quality=90)
            rows.append(
                [pid, name, compute_phash(shot), _title(rng, brand, item, size), label]
            )
    order = rng.permutation(len(rows))
    path = root / "listings.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["posting_id", "image", "image_phash", "title", "label_group"])
        for i in order:
            w.writerow(rows[i])
    return path
