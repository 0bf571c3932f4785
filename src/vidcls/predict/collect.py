"""The inputs of ``vidcls predict``: video files and ``.npy`` feature files, and folders searched for
them recursively; a folder link is followed only where it stays inside the folder given."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..features.video import VIDEO_EXTENSIONS

FEATURE_EXTENSIONS = frozenset({".npy"})
INPUT_HINT = (
    f"give video files ({', '.join(sorted(VIDEO_EXTENSIONS))}), .npy feature files "
    f"(T, D) or folders holding them"
)


def _wanted(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in VIDEO_EXTENSIONS or suffix in FEATURE_EXTENSIONS


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _scan_folder(top: Path, seen_dirs: set[str]) -> list[Path]:
    """The video and .npy files under ``top`` (hidden names skipped), sorted by path.

    A link to a folder is followed only when it leads to a folder inside ``top`` that has not been
    listed yet (by real path): a link can neither lead out of the folder given nor loop.
    """
    top_real = os.path.realpath(top)
    files: list[Path] = []
    pending = [top]
    while pending:
        start = pending.pop(0)
        for dirpath, dirnames, filenames in os.walk(start):  # does not follow links below start
            real = os.path.realpath(dirpath)
            if real in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add(real)
            keep = []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                sub = Path(dirpath) / name
                if sub.is_symlink():
                    target = os.path.realpath(sub)
                    if _inside(target, top_real) and target not in seen_dirs and os.path.isdir(target):
                        pending.append(sub)
                else:
                    keep.append(name)
            dirnames[:] = keep
            files.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and _wanted(Path(f)))
    return sorted(files, key=lambda p: p.as_posix())


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The inputs named by ``paths``: files as given, folders searched recursively.

    Files named directly are taken whatever their extension (one that is not a video becomes a
    record with an error); in folders only video extensions and ``.npy`` are taken, sorted.
    The same file reached twice (by real path) is taken once, at its first place.

    Raises:
        ConfigError: a path that does not exist, or no input found at all.
    """
    out: list[Path] = []
    seen_files: set[str] = set()
    seen_dirs: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _scan_folder(path, seen_dirs)
        elif path.exists():
            found = [path]
        else:
            raise ConfigError(f"{path}: no such file or folder; {INPUT_HINT}")
        for f in found:
            key = os.path.realpath(f)
            if key not in seen_files:
                seen_files.add(key)
                out.append(f)
    if not out:
        raise ConfigError(f"no inputs found in {', '.join(map(str, paths))}; {INPUT_HINT}")
    return out
