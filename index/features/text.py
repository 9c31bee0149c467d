"""Title text: the normalisation applied before TF-IDF and before tokenizing, and the
quantities a title states (the unit rule's parser). A leaf module: it imports nothing of
the project."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_HTML = re.compile(r"&(#\d+|[a-z]+);")
# "500ml" -> "500 ml", "2x" -> "2 x": numbers and units become separate tokens.
_NUM_UNIT = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")


# A run of letters/digits joined by separators ("dsc-w120", "xta-3510-73gb", "cli_8c").
_CODE_RUN = re.compile(r"[^\W_]+(?:[-_./+][^\W_]+)*")
_SEPARATORS = re.compile(r"[-_./+]")


def model_codes(title: str) -> list[str]:
    """Model codes of a title with their separators removed, lower-case, in order, unique.

    A code is a run of letters and digits, possibly joined by `- _ . / +`, of at least 4
    characters once joined, holding a digit and a letter: `DSC-W120` and `DSCW120` both give
    `dscw120`, `XTA-3510-73GB-10K` gives `xta351073gb10k`; `500ml` gives `500ml`; plain
    words and plain numbers give nothing.
    """
    out: dict[str, None] = {}
    for run in _CODE_RUN.findall(title.lower()):
        code = _SEPARATORS.sub("", run)
        if _is_code(code):
            out[code] = None
    return list(out)


def _is_code(joined: str) -> bool:
    return (
        len(joined) >= 4 and any(c.isdigit() for c in joined) and any(c.isalpha() for c in joined)
    )


def mark_codes(title: str) -> str:
    """`title` with each model code (the runs `model_codes` reads) wrapped in brackets,
    Ditto's marking of the tokens that decide a match: `hp 388504-B21 drive` ->
    `hp [ 388504-B21 ] drive`. Other text is unchanged."""

    def wrap(m: re.Match[str]) -> str:
        run = m.group(0)
        return f"[ {run} ]" if _is_code(_SEPARATORS.sub("", run)) else run

    return _CODE_RUN.sub(wrap, title)


def distinct_words(title: str) -> str:
    """The title's word runs (letters and digits, possibly joined by `- _ . / +`), each
    once, in order, lower-case: punctuation and repeats dropped, so that more of what
    differs fits a length-capped pair (Ditto's summarising, without weights):
    `"Null", 388504-B21 Price 388504-B21"` -> `null 388504-b21 price`."""
    return " ".join(dict.fromkeys(_CODE_RUN.findall(title.lower())))


def normalize_title(title: str) -> str:
    """Lower-case, decode HTML entities, split numbers from units, squeeze spaces."""
    import html

    t = html.unescape(title).lower() if _HTML.search(title) else title.lower()
    t = _NUM_UNIT.sub(" ", t)
    return " ".join(t.split())


#: unit spelling -> (canonical unit, factor to the canonical unit)
UNITS: dict[str, tuple[str, float]] = {
    **{u: ("g", 1.0) for u in ("g", "gr", "grm", "gram", "grams", "gramm", "gms")},
    **{u: ("g", 1000.0) for u in ("kg", "kgs", "kilo", "kilogram")},
    "mg": ("g", 0.001),
    **{u: ("ml", 1.0) for u in ("ml", "mls", "cc")},
    **{u: ("ml", 1000.0) for u in ("l", "lt", "ltr", "liter", "litre", "liters")},
    **{
        u: ("pcs", 1.0)
        for u in ("pcs", "pc", "piece", "pieces", "biji", "butir", "lembar", "sachet", "pasang")
    },
    "mah": ("mah", 1.0),
    "gb": ("gb", 1.0),
    "tb": ("gb", 1024.0),
    **{u: ("mm", 1.0) for u in ("mm",)},
    **{u: ("mm", 10.0) for u in ("cm",)},
    "inch": ("inch", 1.0),
}


_UNIT_ALT = "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True))


_QTY = re.compile(r"(?<![\d.,])(\d+(?:[.,]\d+)?)\s*(" + _UNIT_ALT + r")(?![a-z0-9])", re.I)


def _number(s: str, factor: float) -> float:
    if "." in s or "," in s:
        whole, frac = re.split(r"[.,]", s)
        # "1.000 ml", "2,500 mAh": a 3-digit group after the separator of a small integer
        # part is a thousands separator (Indonesian writing); "1,5 kg" and "0.5 l" are decimals.
        thousands = len(frac) == 3 and whole != "0" and factor == 1.0
        return float(whole + frac) if thousands else float(f"{whole}.{frac}")
    return float(s)


def parse_quantities(title: str) -> dict[str, frozenset[float]]:
    """Quantities written in a title, by canonical unit (g, ml, pcs, mah, gb, mm, inch).

    `200gr` / `200 gram` -> {"g": {200}}; `1kg` -> {"g": {1000}}; `1,5 L` -> {"ml": {1500}};
    `2pcs` / `2 biji` -> {"pcs": {2}}. A title can hold several values of one unit.
    """
    out: dict[str, set[float]] = {}
    for num, unit in _QTY.findall(title):
        canon, factor = UNITS[unit.lower()]
        v = round(_number(num, factor) * factor, 6)
        out.setdefault(canon, set()).add(v)
    return {u: frozenset(v) for u, v in out.items()}


def unit_conflict(a: Mapping[str, frozenset[float]], b: Mapping[str, frozenset[float]]) -> bool:
    """True when both carry some unit and share none of its values (`200gr` vs `400gr`)."""
    return any(u in b and not (a[u] & b[u]) for u in a)


class Quantities:
    """The quantities of many titles (`parse_quantities`) as 0/1 sparse rows, so the unit
    rule (`unit_conflict`) is checked for many pairs at once: the one vectorised form of
    the rule, used by the unit-rule stage, its tuning tables and the ranker's features."""

    def __init__(self, titles: Sequence[str]) -> None:
        import scipy.sparse as sp

        units: dict[str, int] = {}
        values: dict[tuple[str, float], int] = {}
        u_rows: list[int] = []
        u_cols: list[int] = []
        v_rows: list[int] = []
        v_cols: list[int] = []
        for i, t in enumerate(titles):
            for u, vs in parse_quantities(t).items():
                u_rows.append(i)
                u_cols.append(units.setdefault(u, len(units)))
                for v in vs:
                    v_rows.append(i)
                    v_cols.append(values.setdefault((u, v), len(values)))
        n = len(titles)

        def ones(r: list[int], c: list[int], shape: tuple[int, int]) -> sp.csr_matrix:
            return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=shape)

        self.U = ones(u_rows, u_cols, (n, len(units)))  # (n, units): the title gives it
        self.V = ones(v_rows, v_cols, (n, len(values)))  # (n, values): and that value
        unit_of = [units[u] for u, _ in values]
        self.to_unit = ones(list(range(len(values))), unit_of, (len(values), len(units)))
        self.has = np.diff(self.U.indptr) > 0  # (n,) the title gives some quantity

    def conflicts(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(m,) bool: `unit_conflict` of the pairs of rows (a[p], b[p])."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        out = np.zeros(len(a), bool)
        both = np.flatnonzero(self.has[a] & self.has[b])
        if len(both) == 0:
            return out
        a, b = a[both], b[both]
        shared_unit = self.U[a].multiply(self.U[b]).tocsr()  # (m', units)
        shared_value = (self.V[a].multiply(self.V[b]) @ self.to_unit).tocsr()  # per unit
        lacking = shared_unit - shared_unit.multiply(shared_value > 0)
        out[both] = np.asarray(lacking.sum(axis=1)).ravel() > 0
        return out


class WordWeights:
    """Inverse document frequencies of the words of a catalogue's titles (`normalize_title`
    split on spaces), fitted once on the titles a ranker is trained on and saved with it, so
    a pair's features do not depend on the pool it is decided in (one listing against its
    candidates at `/match`, a whole CSV at `match`).

    idf(w) = ln((1 + N) / (1 + df(w))) + 1; a word the titles never had weighs as one seen
    in no title (the rarest).
    """

    def __init__(self, idf: Mapping[str, float], rows: int) -> None:
        self.idf = dict(idf)
        self.rows = rows
        self.unseen = float(np.log(1.0 + rows) + 1.0)

    @classmethod
    def fit(cls, titles: Sequence[str]) -> WordWeights:
        df: dict[str, int] = {}
        for t in titles:
            for w in set(normalize_title(t).split()):
                df[w] = df.get(w, 0) + 1
        n = len(titles)
        return cls({w: float(np.log((1.0 + n) / (1.0 + c)) + 1.0) for w, c in df.items()}, n)

    def to_json(self) -> dict[str, object]:
        return {"rows": self.rows, "idf": dict(sorted(self.idf.items()))}

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> WordWeights:
        idf = raw["idf"]
        rows = raw["rows"]
        if not isinstance(idf, dict) or not isinstance(rows, int):
            raise ValueError("word weights need 'rows' (int) and 'idf' (word -> weight)")
        return cls({str(w): float(v) for w, v in idf.items()}, rows)

    def differences(
        self, titles: Sequence[str], a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For the pairs (a[p], b[p]) of `titles`, over the words in one title and not the
        other: the largest weight (0 when the word sets are equal), and their share of the
        weight of all the pair's words (0 for two empty titles). Both (m,) float32."""
        import scipy.sparse as sp

        vocab: dict[str, int] = {}
        indptr = np.zeros(len(titles) + 1, np.int64)
        cols: list[int] = []
        for i, t in enumerate(titles):
            cols += [vocab.setdefault(w, len(vocab)) for w in set(normalize_title(t).split())]
            indptr[i + 1] = len(cols)
        W = sp.csr_matrix(
            (np.ones(len(cols), np.float64), np.asarray(cols, np.int64), indptr),
            shape=(len(titles), len(vocab)),
        )
        return self.differences_of(W, list(vocab), a, b)

    def differences_of(
        self, W: Any, words: Sequence[str], a: np.ndarray, b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`differences` from the titles' words as a 0/1 (n, vocab) sparse matrix `W`
        whose columns are `words` (built once by a caller that has it already)."""
        weight = np.array([self.idf.get(w, self.unseen) for w in words], np.float64)
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        if len(a) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        both = (W[a] + W[b]).tocsr()  # (m, vocab): 1 in one title, 2 in both
        w = weight[both.indices]
        one = np.where(both.data == 1.0, w, 0.0)
        rows = np.repeat(np.arange(len(a)), np.diff(both.indptr))
        largest = np.zeros(len(a))
        np.maximum.at(largest, rows, one)
        total = np.bincount(rows, weights=w, minlength=len(a))
        differ = np.bincount(rows, weights=one, minlength=len(a))
        share = np.divide(differ, total, out=np.zeros(len(a)), where=total > 0)
        return largest.astype(np.float32), share.astype(np.float32)
