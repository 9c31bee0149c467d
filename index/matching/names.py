"""Signal and source-mode names: a leaf module without numpy, so the command line builds its
parser without loading the matching code."""

from __future__ import annotations

from typing import Literal

SignalName = Literal["tfidf", "char", "phash", "text", "image", "combined"]
#: "combined" is the weighted concatenation of modalities (`Stages.combined_weights`);
#: "char" the character n-gram TF-IDF (`TfidfConfig.char_source`, computed only when set).
SIGNALS: tuple[SignalName, ...] = ("tfidf", "char", "phash", "text", "image", "combined")
#: The signals computed from the features themselves (the stages add others: combined).
BASE_SIGNALS: tuple[str, ...] = ("tfidf", "char", "phash", "text", "image")
#: How listings' sources (`Catalogue.source`) shape the links: "any" ignores them, "cross"
#: links only rows of different sources, "cross_first" keeps same-source links but puts
#: other sources first; with both, a row with no other-source link takes its nearest
#: other-source neighbour (the at-least-one-match rule across sources).
SourceMode = Literal["any", "cross", "cross_first"]
SOURCE_MODES: tuple[SourceMode, ...] = ("any", "cross", "cross_first")
