"""``--smoke`` for every benchmark script: the same code on tiny data, in seconds.

``make test`` runs each script this way (tests/test_benchmarks.py), so a renamed option or a changed
record breaks the test, not the next person who measures. Figures printed in smoke mode mean nothing.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path


def smoke_parse(parser: argparse.ArgumentParser, smoke: dict, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with a ``--smoke`` flag that swaps in the ``smoke`` defaults
    (options given on the command line still win).

    Args:
        smoke: ``{dest: value}``; every key must be one of the parser's options (checked).
    """
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny data and sizes, to check the script runs (its figures mean nothing)",
    )
    known = {a.dest for a in parser._actions}
    unknown = sorted(set(smoke) - known)
    if unknown:
        raise SystemExit(f"smoke defaults name no option of this script: {unknown}")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--smoke" in argv:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def scratch(name: str) -> Path:
    """A temporary folder for the smoke data, removed when the script ends."""
    path = Path(tempfile.mkdtemp(prefix=f"vidcls-bench-{name}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
