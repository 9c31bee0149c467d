"""Pairwise-labelled data: the entity-matching layout (Magellan / DeepMatcher / Ditto).

A folder of::

    tableA.csv                 id,<attributes...>   records of the left table
    tableB.csv (optional)      id,<attributes...>   records of the right table (without it,
                                                    both sides of a pair are tableA ids)
    train.csv, valid.csv, test.csv (each optional)  ltable_id,rtable_id,label (1 = match)

becomes one `Catalogue` of every record (posting ids `a-<id>` and `b-<id>`; the title is
the `title` attribute, or all attributes joined when there is none) and the labelled pairs
as row indices; with two tables each record's `source` is its table ("a" or "b"). Matching
runs over all records; scoring counts only labelled pairs (an unlabelled pair is unknown,
not a non-match).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.data.listings import MAX_FIELD, Catalogue, check_fields
from index.errors import CatalogueError

SPLITS = ("train", "valid", "test")
PAIR_COLUMNS = ("ltable_id", "rtable_id", "label")


@dataclass(frozen=True)
class Pairs:
    """Labelled pairs of catalogue rows: left (m,), right (m,) int64 rows, label (m,) bool."""

    left: np.ndarray
    right: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return int(self.left.shape[0])


@dataclass
class PairData:
    """Every record of the tables as one catalogue, and the labelled pairs per split."""

    catalogue: Catalogue
    splits: dict[str, Pairs] = field(default_factory=dict)

    def pairs(self, *names: str) -> Pairs:
        """The pairs of the named splits, concatenated. Raises CatalogueError if one is absent."""
        missing = [n for n in names if n not in self.splits]
        if missing:
            have = ", ".join(self.splits) or "none"
            raise CatalogueError(f"no {'/'.join(missing)} pairs in this folder (have: {have})")
        got = [self.splits[n] for n in names]
        return Pairs(
            np.concatenate([p.left for p in got]),
            np.concatenate([p.right for p in got]),
            np.concatenate([p.label for p in got]),
        )


def is_pair_folder(path: str | Path) -> bool:
    """True for a folder in the entity-matching layout (it holds tableA.csv)."""
    return Path(path).is_dir() and (Path(path) / "tableA.csv").is_file()


def _read_table(
    path: Path, prefix: str, fields: tuple[str, ...] | None = None
) -> tuple[list[str], list[str], dict[str, int], dict[str, list[str]]]:
    """posting ids, titles (the `fields` joined, by default `title` or else every attribute),
    and record id -> position of one table."""
    csv.field_size_limit(MAX_FIELD)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CatalogueError(f"{path}: cannot read ({e})") from e
    if not rows or "id" not in rows[0]:
        raise CatalogueError(f"{path}: needs an `id` column (header: {rows[0] if rows else []})")
    header = rows[0]
    id_col = header.index("id")
    if fields is not None:
        missing = [f for f in fields if f not in header]
        if missing:
            raise CatalogueError(
                f"{path}: no field(s) {', '.join(missing)} (has: {', '.join(header)})"
            )
        cols = [header.index(f) for f in fields]
    elif "title" in header:
        cols = [header.index("title")]
    else:
        cols = [i for i in range(len(header)) if i != id_col]
    ids: list[str] = []
    titles: list[str] = []
    pos: dict[str, int] = {}
    per: dict[str, list[str]] = {header[i]: [] for i in cols}
    for line, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise CatalogueError(f"{path}: line {line} has {len(r)} fields, expected {len(header)}")
        rid = r[id_col].strip()
        if not rid or rid in pos:
            raise CatalogueError(f"{path}: line {line}: empty or duplicate id {rid!r}")
        pos[rid] = len(ids)
        ids.append(f"{prefix}-{rid}")
        titles.append(" ".join(r[i].strip() for i in cols if r[i].strip()))
        for i in cols:
            per[header[i]].append(r[i].strip())
    return ids, titles, pos, per


def _read_pairs(path: Path, left: dict[str, int], right: dict[str, int], offset: int) -> Pairs:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(c.strip() for c in rows[0][:3]) != PAIR_COLUMNS:
        raise CatalogueError(f"{path}: header must start with {','.join(PAIR_COLUMNS)}")
    li, ri, lab = [], [], []
    for line, r in enumerate(rows[1:], start=2):
        try:
            a, b, y = r[0].strip(), r[1].strip(), int(r[2])
        except (IndexError, ValueError):
            raise CatalogueError(f"{path}: line {line}: expected ltable_id,rtable_id,0|1") from None
        if a not in left or b not in right or y not in (0, 1):
            raise CatalogueError(
                f"{path}: line {line}: unknown id or label ({a!r}, {b!r}, {y}); ids must be in "
                "the tables, labels 0 or 1"
            )
        li.append(left[a])
        ri.append(right[b] + offset)
        lab.append(bool(y))
    return Pairs(np.array(li, np.int64), np.array(ri, np.int64), np.array(lab, bool))


def read_pair_folder(folder: str | Path, fields: Sequence[str] | None = None) -> PairData:
    """Read a folder in the entity-matching layout (see the module doc); `fields`: the
    attributes joined into each record's title, in this order (default: see the module doc).

    Raises:
        CatalogueError: no tableA.csv, a table without ids or with duplicates, a pair file
            with another header, an unknown id or a label other than 0/1.
    """
    root = Path(folder)
    if not is_pair_folder(root):
        raise CatalogueError(f"{root}: not an entity-matching folder (no tableA.csv)")
    chosen = check_fields(fields)
    ids, titles, left, per = _read_table(root / "tableA.csv", "a", chosen)
    right, offset = left, 0
    if (root / "tableB.csv").is_file():
        b_ids, b_titles, right, b_per = _read_table(root / "tableB.csv", "b", chosen)
        offset = len(ids)
        ids, titles = ids + b_ids, titles + b_titles
        per = {
            f: per.get(f, [""] * offset) + b_per.get(f, [""] * len(b_ids)) for f in {**per, **b_per}
        }
    source = None if offset == 0 else ["a"] * offset + ["b"] * (len(ids) - offset)
    cat = Catalogue(
        posting_id=ids, title=titles, source=source, fields=per if chosen is not None else None
    )
    splits = {
        s: _read_pairs(root / f"{s}.csv", left, right, offset)
        for s in SPLITS
        if (root / f"{s}.csv").is_file()
    }
    return PairData(cat, splits)


def pair_components(n: int, pairs: Pairs) -> np.ndarray:
    """(n,) int64 group of each row: connected components of the positive pairs (rows in no
    positive pair are their own group); the folds of pairwise data split by these."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    pos = pairs.label
    g = sp.coo_matrix((np.ones(int(pos.sum())), (pairs.left[pos], pairs.right[pos])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    return comp.astype(np.int64)
