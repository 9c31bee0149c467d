"""Reading and validating listings CSVs (Kaggle Shopee format).

Required columns: `posting_id, title`. Optional: `image, image_phash, label_group`.
Hard problems (missing columns, duplicate ids, non-UTF-8 bytes, malformed CSV) raise
`CatalogueError` naming the line. Soft problems never drop a row: an empty title or a
missing/corrupt image only removes that signal for the row, and each is counted in
`Catalogue.issues` so the caller can report it.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from index.errors import CatalogueError

REQUIRED = ("posting_id", "title")
OPTIONAL = ("image", "image_phash", "label_group")
#: Largest CSV field accepted (bytes); a title is a few hundred.
MAX_FIELD = 1 << 20


@dataclass
class Catalogue:
    """Listings as parallel columns. `image` holds paths resolved against the images folder."""

    posting_id: list[str]
    title: list[str]
    image: list[str] | None = None
    image_phash: list[str] | None = None
    label_group: list[str] | None = None
    issues: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.posting_id)

    @property
    def labels(self) -> np.ndarray:
        """Integer codes of `label_group`, shape (n,). Raises if the CSV had none."""
        if self.label_group is None:
            raise CatalogueError("this CSV has no label_group column (needed for evaluation)")
        _, codes = np.unique(np.asarray(self.label_group), return_inverse=True)
        return codes.astype(np.int64)

    def subset(self, rows: Iterable[int] | np.ndarray) -> Catalogue:
        """Rows `rows` as a new catalogue (issues are not carried)."""
        r = [int(i) for i in rows]

        def pick(col: list[str] | None) -> list[str] | None:
            return None if col is None else [col[i] for i in r]

        return Catalogue(
            posting_id=[self.posting_id[i] for i in r],
            title=[self.title[i] for i in r],
            image=pick(self.image),
            image_phash=pick(self.image_phash),
            label_group=pick(self.label_group),
        )

    def first_groups(self, n: int) -> Catalogue:
        """The rows of the first `n` label groups, in file order (a smaller labelled pool)."""
        if self.label_group is None:
            raise CatalogueError("this CSV has no label_group column")
        keep = set(list(dict.fromkeys(self.label_group))[:n])
        return self.subset([i for i, g in enumerate(self.label_group) if g in keep])

    def issue_lines(self) -> list[str]:
        """Human-readable report of the soft problems found while reading."""
        return [f"{n} row(s): {what}" for what, n in sorted(self.issues.items())]


def parse_csv(data: bytes | str, source: str = "<upload>") -> tuple[list[str], list[list[str]]]:
    """Decode and split a CSV into header and rows, with errors that name the line."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise CatalogueError(
                f"{source}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} on line {line}); "
                "save the CSV as UTF-8"
            ) from e
    else:
        text = data
    if not text.strip():
        raise CatalogueError(f"{source}: the CSV is empty")
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        rows = list(reader)
    except csv.Error as e:
        raise CatalogueError(f"{source}: malformed CSV near line {reader.line_num}: {e}") from e
    return header, rows


def read_catalogue(
    src: str | Path | bytes,
    images_dir: str | Path | None = None,
    check_images: bool = True,
    source: str | None = None,
) -> Catalogue:
    """Read a listings CSV.

    Args:
        src: a path, or the CSV's bytes (an upload).
        images_dir: folder the `image` column's names are resolved against; without it
            the image column is kept as given but no image is read.
        check_images: with `images_dir`, count rows whose image file is missing.
        source: name used in error messages (defaults to the path).

    Raises:
        CatalogueError: unreadable file, not UTF-8, malformed CSV, missing required
            columns, rows with the wrong number of fields, duplicate or empty posting_ids.
    """
    if isinstance(src, bytes):
        data, name = src, source or "<upload>"
    else:
        path = Path(src)
        name = source or str(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CatalogueError(f"cannot read {name}: {e.strerror or e}") from e
    header, rows = parse_csv(data, name)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CatalogueError(
            f"{name}: missing required column(s) {', '.join(missing)}; "
            f"found {', '.join(header) or 'none'} (need {', '.join(REQUIRED)}, "
            f"optional {', '.join(OPTIONAL)})"
        )
    dupcols = [c for c, n in Counter(header).items() if n > 1]
    if dupcols:
        raise CatalogueError(f"{name}: duplicate column(s) {', '.join(dupcols)}")
    col = {h: i for i, h in enumerate(header)}
    bad = [i for i, r in enumerate(rows) if len(r) != len(header) and any(r)]
    if bad:
        i = bad[0]
        raise CatalogueError(
            f"{name}: line {i + 2} has {len(rows[i])} field(s), the header has {len(header)} "
            f"({len(bad)} such line(s))"
        )
    rows = [r for r in rows if any(r)]  # blank lines are not listings
    if not rows:
        raise CatalogueError(f"{name}: no rows after the header")

    def column(c: str) -> list[str] | None:
        return [r[col[c]].strip() for r in rows] if c in col else None

    ids = column("posting_id")
    assert ids is not None
    empty_ids = [i + 2 for i, p in enumerate(ids) if not p]
    if empty_ids:
        raise CatalogueError(f"{name}: empty posting_id on line(s) {_lines(empty_ids)}")
    dups = [p for p, n in Counter(ids).items() if n > 1]
    if dups:
        raise CatalogueError(
            f"{name}: {len(dups)} duplicate posting_id(s), e.g. {', '.join(dups[:5])}"
        )
    titles = [r[col["title"]] for r in rows]
    cat = Catalogue(
        posting_id=ids,
        title=[" ".join(t.split()) for t in titles],
        image=column("image"),
        image_phash=column("image_phash"),
        label_group=column("label_group"),
    )
    n_empty = sum(1 for t in cat.title if not t)
    if n_empty:
        cat.issues["empty title (no title signal)"] = n_empty
    if cat.image_phash is not None:
        bad_hash = [i for i, h in enumerate(cat.image_phash) if h and not _is_hex64(h)]
        for i in bad_hash:
            cat.image_phash[i] = ""
        if bad_hash:
            cat.issues["image_phash not 16 hex digits (ignored)"] = len(bad_hash)
    if cat.label_group is not None and any(not g for g in cat.label_group):
        lines = [i + 2 for i, g in enumerate(cat.label_group) if not g]
        raise CatalogueError(f"{name}: empty label_group on line(s) {_lines(lines)}")
    if images_dir is not None and cat.image is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise CatalogueError(f"images folder not found: {root}")
        cat.image = [str(root / f) if f else "" for f in cat.image]
        if check_images:
            n_missing = sum(1 for f in cat.image if not f or not Path(f).is_file())
            if n_missing:
                cat.issues["image file missing (no image signal)"] = n_missing
    return cat


def _is_hex64(h: str) -> bool:
    if len(h) != 16:
        return False
    try:
        int(h, 16)
    except ValueError:
        return False
    return True


def _lines(lines: list[int]) -> str:
    head = ", ".join(map(str, lines[:5]))
    return head + (f" (+{len(lines) - 5} more)" if len(lines) > 5 else "")


def write_submission(
    path: str | Path | io.StringIO, ids: list[str], matches: list[list[str]]
) -> None:
    """Write the Kaggle submission: exactly `posting_id,matches`, ids space-separated."""
    assert len(ids) == len(matches)
    if isinstance(path, io.StringIO):
        _write_rows(path, ids, matches)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        _write_rows(f, ids, matches)


def _write_rows(f: TextIO, ids: list[str], matches: list[list[str]]) -> None:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["posting_id", "matches"])
    for p, m in zip(ids, matches, strict=True):
        w.writerow([p, " ".join(m)])
