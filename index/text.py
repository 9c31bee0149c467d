"""Title text: the normalisation applied before TF-IDF and before tokenizing (a leaf
module: it imports nothing of the project)."""

from __future__ import annotations

import re

_HTML = re.compile(r"&(#\d+|[a-z]+);")
# "500ml" -> "500 ml", "2x" -> "2 x": numbers and units become separate tokens.
_NUM_UNIT = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")


def normalize_title(title: str) -> str:
    """Lower-case, decode HTML entities, split numbers from units, squeeze spaces."""
    import html

    t = html.unescape(title).lower() if _HTML.search(title) else title.lower()
    t = _NUM_UNIT.sub(" ", t)
    return " ".join(t.split())
