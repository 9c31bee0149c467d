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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

