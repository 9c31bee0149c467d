"""The `pricematch` command line (argparse lives here and nowhere else in `index/`)."""

from index.cli.parser import build_parser, main, register

__all__ = ["build_parser", "main", "register"]
