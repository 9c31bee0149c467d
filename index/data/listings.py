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
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, TextIO

import numpy as np

from index.errors import CatalogueError

REQUIRED = ("posting_id", "title")
OPTIONAL = ("image", "image_phash", "label_group", "source")
#: Largest CSV field accepted (bytes); a title is a few hundred.
MAX_FIELD = 1 << 20
#: What a posting_id may be, everywhere (CSVs, bundles, the service's routes).
POSTING_ID_RULE = (
    "1 to 200 characters, no '/', no control characters, no spaces at either end, not only dots"
)
_SPACE = r"\t\n\v\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CTRL = r"/\x00-\x1f\x7f"
#: `POSTING_ID_RULE` as one regex, valid in Python and in JSON Schema (ECMA): 1-200
#: characters is checked apart.
_N, _A, _E = rf"[^.{_CTRL}{_SPACE}]", rf"[^{_CTRL}]", rf"[^{_CTRL}{_SPACE}]"  # no lookahead
POSTING_ID_PATTERN = rf"^(?:{_N}(?:{_A}*{_E})?|\.(?:{_A}*{_N}|{_A}*[^.{_CTRL}]{_A}*{_E}))$"
_ID = re.compile(POSTING_ID_PATTERN)
_BAD_ID_CHAR = re.compile(rf"[{_CTRL}]")


def check_posting_id(p: str) -> str | None:
    """What is wrong with posting_id `p` under `POSTING_ID_RULE`, or None if nothing."""
    if not p:
        return "is empty"
    if len(p) > 200:
        return "is over 200 characters"
    if _ID.fullmatch(p):
        return None
    if m := _BAD_ID_CHAR.search(p):
        return f"contains {m.group()!r}"
    if not p.strip("."):
        return "is only dots"
    return "starts or ends with a space"


def resolve_image(root: Path, name: str) -> Path | None:
    """The file `name` (an `image` CSV value) names inside folder `root`, or None when the
    name could leave it: absolute, a drive, `..`, a NUL, or a symlink leading outside.

    `root` must be resolved (`Path.resolve()`).
    """
    if not name or "\x00" in name or PureWindowsPath(name).drive:
        return None
    parts = PurePosixPath(name.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        return None
    try:
        path = (root / parts).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_relative_to(root) else None


@dataclass
class Catalogue:
    """Listings as parallel columns.

    `image_name` is the CSV's `image` column as given; `image` holds the files those names
    resolve to inside the images folder ("" where none), and is None without an images
    folder: no image is ever opened then.
    """

    posting_id: list[str]
    title: list[str]
    image: list[str] | None = None
    image_phash: list[str] | None = None
    label_group: list[str] | None = None
    issues: Counter[str] = field(default_factory=Counter)
    image_name: list[str] | None = None
    #: where each listing comes from (a shop, a table); "" where unknown; None: no column
    source: list[str] | None = None
    #: each text field's values when the title was joined from named fields (`fields=`)
    fields: dict[str, list[str]] | None = None

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
            image_name=pick(self.image_name),
            source=pick(self.source),
            fields=None if self.fields is None else {k: pick(v) for k, v in self.fields.items()},  # type: ignore[misc]
        )

    def first_groups(self, n: int) -> Catalogue:
        """The rows of the first `n` label groups, in file order (a smaller labelled pool)."""
        if self.label_group is None:
            raise CatalogueError("this CSV has no label_group column")
        keep = set(list(dict.fromkeys(self.label_group))[:n])
        return self.subset([i for i, g in enumerate(self.label_group) if g in keep])

    @property
    def source_codes(self) -> np.ndarray | None:
        """(n,) int64 code of each row's source, -1 where unknown; None without sources (no
        `source` column, or all empty)."""
        if self.source is None or not any(self.source):
            return None
        names = sorted({s for s in self.source if s})
        code = {s: i for i, s in enumerate(names)}
        return np.array([code.get(s, -1) for s in self.source], np.int64)

    def issue_lines(self) -> list[str]:
        """Human-readable report of the soft problems found while reading."""
        return [f"{n} row(s): {what}" for what, n in sorted(self.issues.items())]


def _reader(data: bytes | str, source: str) -> tuple[list[str], Iterator[list[str]], Any]:
    """The header, an iterator over the remaining rows and the csv reader (for `line_num`);
    bytes are decoded as they are read (no second copy of the file)."""
    f: TextIO = (
        io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        if isinstance(data, bytes)
        else io.StringIO(data, newline="")
    )
    csv.field_size_limit(MAX_FIELD)
    reader = csv.reader(f, strict=True)

    def rows() -> Iterator[list[str]]:
        try:
            yield from reader
        except csv.Error as e:
            raise CatalogueError(f"{source}: malformed CSV near line {reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise _not_utf8(data, source) from e

    it = rows()
    header = [h.strip() for h in next(it, [])]
    if not any(header):  # no bytes, only white space, or a blank first line
        raise CatalogueError(f"{source}: the CSV is empty")
    return header, it, reader


def _not_utf8(data: bytes | str, source: str) -> CatalogueError:
    assert isinstance(data, bytes)
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return CatalogueError(
            f"{source}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} on line {line}); "
            "save the CSV as UTF-8"
        )
    return CatalogueError(f"{source}: not UTF-8 text; save the CSV as UTF-8")


def read_catalogue(
    src: str | Path | bytes,
    images_dir: str | Path | None = None,
    check_images: bool = True,
    source: str | None = None,
    max_rows: int | None = None,
    fields: Sequence[str] | None = None,
) -> Catalogue:
    """Read a listings CSV, in one pass that stops at the first hard problem.

    Args:
        src: a path, or the CSV's bytes (an upload).
        images_dir: folder the `image` column's names are resolved against (a name that
            would leave it counts as missing); without it the names are kept in
            `image_name` and no image is read.
        check_images: with `images_dir`, count rows whose image file is missing.
        source: name used in error messages (defaults to the path).
        max_rows: refuse a CSV with more listings than this.
        fields: the columns whose non-empty values, joined in this order, make each
            listing's title (default: the `title` column alone).

    Raises:
        CatalogueError: unreadable file, not UTF-8, malformed CSV, missing required
            columns, rows with the wrong number of fields, duplicate, empty or invalid
            posting_ids (`POSTING_ID_RULE`), more than `max_rows` rows.
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
    header, rows, reader = _reader(data, name)
    fields = check_fields(fields)
    required = REQUIRED if fields is None else ("posting_id", *fields)
    missing = [c for c in required if c not in header]
    if missing:
        raise CatalogueError(
            f"{name}: missing required column(s) {', '.join(missing)}; "
            f"found {', '.join(header) or 'none'} (need {', '.join(required)}, "
            f"optional {', '.join(OPTIONAL)})"
        )
    dupcols = [c for c, n in Counter(header).items() if n > 1]
    if dupcols:
        raise CatalogueError(f"{name}: duplicate column(s) {', '.join(dupcols)}")
    keep = {c: header.index(c) for c in (*required, *OPTIONAL) if c in header}
    if fields is not None:
        keep.pop("title", None)
        text_cols = [header.index(c) for c in fields]
    cols: dict[str, list[str]] = {c: [] for c in keep}
    cols["title"] = []
    per_field: list[list[str]] = []
    seen: dict[str, int] = {}  # posting_id -> its line
    ip = keep["posting_id"]
    for row in rows:
        if not any(row):
            continue  # blank lines are not listings
        line = reader.line_num
        if len(row) != len(header):
            raise CatalogueError(
                f"{name}: line {line} has {len(row)} field(s), the header has {len(header)}"
            )
        pid = row[ip].strip()
        if not pid:
            raise CatalogueError(f"{name}: empty posting_id on line {line}")
        if why := check_posting_id(pid):
            raise CatalogueError(
                f"{name}: the posting_id on line {line} {why}; a posting_id is {POSTING_ID_RULE}"
            )
        if pid in seen:
            raise CatalogueError(
                f"{name}: duplicate posting_id {pid!r} on line {line} (first on line {seen[pid]})"
            )
        seen[pid] = line
        if max_rows is not None and len(seen) > max_rows:
            raise CatalogueError(f"{name}: over {max_rows:,} rows, the limit of one CSV")
        for c, i in keep.items():
            cols[c].append(row[i] if c == "title" else row[i].strip())
        if fields is not None:
            cols["title"].append(" ".join(row[i] for i in text_cols if row[i].strip()))
            per_field.append([row[i] for i in text_cols])
    if not seen:
        raise CatalogueError(f"{name}: no rows after the header")
    del seen
    names = cols.get("image")
    cat = Catalogue(
        posting_id=cols["posting_id"],
        title=[" ".join(t.split()) for t in cols["title"]],
        image_phash=cols.get("image_phash"),
        label_group=cols.get("label_group"),
        image_name=names,
        source=cols.get("source"),
        fields=None
        if fields is None
        else {
            f: [" ".join(row_text[k].split()) for row_text in per_field]
            for k, f in enumerate(fields)
        },
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
    if images_dir is not None and names is not None:
        root = Path(images_dir)
        if not root.is_dir():
            raise CatalogueError(f"images folder not found: {root}")
        real = root.resolve()
        found = [resolve_image(real, f) for f in names]
        outside = sum(1 for f, p in zip(names, found, strict=True) if f and p is None)
        if outside:
            cat.issues["image name leaves the images folder (ignored)"] = outside
        cat.image = [str(p) if p is not None else "" for p in found]
        if check_images:
            n_missing = sum(1 for f in cat.image if f and not Path(f).is_file())
            n_missing += sum(1 for f in names if not f)
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


def check_fields(fields: Sequence[str] | None) -> tuple[str, ...] | None:
    """The text fields as given (stripped), None for the default; CatalogueError for an
    empty list, an empty or repeated name."""
    if fields is None:
        return None
    out = tuple(f.strip() for f in fields)
    if not out or any(not f for f in out) or len(set(out)) != len(out):
        raise CatalogueError(f"fields must be distinct column names, got {list(fields)}")
    return out


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


#: The columns of a links file before the per-signal similarities.
LINK_COLUMNS = ("posting_id", "match", "score", "decided_by")


def write_links(
    path: str | Path,
    ids: list[str],
    signals: list[str],
    links: Iterable[tuple[int, int, float, str, list[float]]],
) -> int:
    """Write one CSV line per link: `posting_id,match,score,decided_by,<signal>...` (each
    signal's similarity, empty where a side lacks it; the score of the row itself is never
    written: a row's link to itself is not a line). Returns the number of links."""
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([*LINK_COLUMNS, *signals])
        for i, j, score, why, sims in links:
            w.writerow(
                [ids[i], ids[j], f"{score:.6f}", why, *("" if s != s else f"{s:.6f}" for s in sims)]
            )
            count += 1
    return count
