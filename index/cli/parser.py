"""The `pricematch` command line.

Sub-commands come from the `pricematch.commands` entry-point group: each of `index`,
`training` and `service` registers its own with a `register(subparsers)` function, so the
library never imports the layers built on it. A handler takes the parsed args and returns
an exit code; `PricematchError`s become a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from typing import Any

from index.errors import PricematchError

log = logging.getLogger("pricematch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pricematch", description="Find listings that are the same product."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seen: set[str] = set()
    for ep in sorted(entry_points(group="pricematch.commands"), key=lambda e: e.name):
        if ep.value in seen:
            continue
        seen.add(ep.value)
        try:
            reg = ep.load()
        except ImportError as e:  # a broken install: say so, keep the other commands
            print(f"pricematch: the {ep.name} commands are unavailable ({e})", file=sys.stderr)
            continue
        reg(sub)
    if "index.cli:register" not in seen:  # running from a source tree without entry points
        register(sub)
    return parser


#: Commands whose first argument may be data instead of one of their parts: command ->
#: (the part that takes it, every part's name); `train DATA` is `train all DATA`.
DEFAULT_PARTS: dict[str, tuple[str, frozenset[str]]] = {}


def default_part(command: str, part: str, parts: set[str]) -> None:
    """Let `pricematch COMMAND ARG ...` mean `COMMAND PART ARG ...` when ARG names no part."""
    DEFAULT_PARTS[command] = (part, frozenset(parts | {part}))


def with_default_part(argv: list[str]) -> list[str]:
    """`argv` with the default part inserted after a command that takes one (see
    `default_part`); other command lines unchanged."""
    pos = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if pos is None or argv[pos] not in DEFAULT_PARTS or pos + 1 >= len(argv):
        return argv
    part, parts = DEFAULT_PARTS[argv[pos]]
    nxt = argv[pos + 1]
    if nxt in parts or nxt.startswith("-"):
        return argv
    return [*argv[: pos + 1], part, *argv[pos + 1 :]]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(with_default_part(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except PricematchError as e:
        print(f"pricematch {args.command}: error: {e}", file=sys.stderr)
        return 2


def register(sub: Any) -> None:
    """Add the library's commands: match, evaluate, build-index, sample."""
    from index.cli.args import register as add_commands

    add_commands(sub)

