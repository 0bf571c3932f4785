"""Multi-file splits: a split written as K shard files (one per extraction process), read as one.

Shard ``i`` of ``K`` (0-based) of split ``s`` is ``s-0000i-of-0000K.h5`` (5 digits each); the
extraction process that wrote it keeps its report in ``extract_report-0000i-of-0000K.json``.
Every shard file has the ordinary single-file layout (:mod:`vidcls.store.reader`), so the format
is unchanged and each file also opens on its own as a ``FeatureStore``.

Completeness is judged from the shard reports, not from the shard files: a shard whose share held
no video of a split writes no file for it, so a missing file alone cannot tell "empty" from "lost".
The rule: a directory holds a sharded data set when any ``<split>-*-of-*.h5`` file is there; then
all K reports must exist, all say ``status: complete``, all come from the same scan of the videos,
and every shard whose report counts extracted (``ok``) videos of a split must have that split's
file with at least that many videos. Anything else is a ``StoreError`` naming the shard, so a
partial data set never trains silently.

``MultiFileStore`` reads a split's shard files as one store, concatenated in shard order.
``vidcls merge`` (:func:`vidcls.features.sharding.merge`) turns them into single files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .labels import LabelSets
from .reader import SPLITS, FeatureStore, name_ids
from .rows import Rows
from .writer import write_store

# extractor keys that may differ between files of one data set (they do not change features)
RUNTIME_KEYS = ("torch", "torchvision", "timm", "open_clip", "vidcls_version", "precision", "weights_path")
SHARD_FILE_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.h5$")
SHARD_REPORT_RE = re.compile(r"^extract_report-(?P<index>\d{5})-of-(?P<count>\d{5})\.json$")
SHARD_KEY = "shard"  # the report's record of its shard: {"index", "count", "videos", "scan"}


def shard_name(split: str, index: int, count: int) -> str:
    """``train-00001-of-00004.h5``: the file of shard ``index`` (0-based) of ``count``."""
    return f"{split}-{index:05d}-of-{count:05d}.h5"


def shard_report_name(index: int, count: int) -> str:
    """``extract_report-00001-of-00004.json``: the report of shard ``index`` of ``count``."""
    return f"extract_report-{index:05d}-of-{count:05d}.json"


def assign_shards(sizes: Sequence[int], count: int) -> list[int]:
    """Deal items to ``count`` shards balanced by size: largest first, each to the least-loaded shard.

    Deterministic: equal sizes keep their input order and equal loads go to the lower shard, so the
    same list always gives the same shares (a re-run shard resumes exactly its own share).

    Args:
        sizes: one size (bytes) per item, in a fixed order. count: K >= 1.

    Returns:
        The shard (0..K-1) of each item, in input order.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    loads = [0] * count
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda k: -int(sizes[k])):  # sorted() is stable
        target = min(range(count), key=lambda s: loads[s])  # first of equal loads
        owner[i] = target
        loads[target] += int(sizes[i])
    return owner


def shard_files(d: Path) -> list[Path]:
    """Every shard file and shard report in ``d`` (by name), sorted."""
    if not d.is_dir():
        return []
    return sorted(
        p
        for p in d.iterdir()
        if ((m := SHARD_FILE_RE.match(p.name)) and m["split"] in SPLITS) or SHARD_REPORT_RE.match(p.name)
    )


def shard_count(d: Path) -> int | None:
    """K of the shard files and reports in ``d`` (None: there are none).

    Raises:
        StoreError: files of different K lie together (left over from another sharded run).
    """
    counts: dict[int, list[str]] = {}
    for p in shard_files(d):
        m = SHARD_FILE_RE.match(p.name) or SHARD_REPORT_RE.match(p.name)
        assert m is not None  # shard_files lists only names that match one of the two
        counts.setdefault(int(m["count"]), []).append(p.name)
    if len(counts) > 1:
        shown = "; ".join(f"of {k}: {name_ids(v)}" for k, v in sorted(counts.items()))
        raise StoreError(
            f"{d} holds shards of different sharded runs ({shown}); keep the files of "
            f"one run and remove the others"
        )
    return next(iter(counts), None)


def check_output_dir(d: Path, count: int | None) -> None:
    """Before extracting into ``d``: it must not end up with single files and shards together.

    Args:
        d: FEATURES_DIR. count: K of the sharded run about to start (None: a single-file run).

    Raises:
        StoreError: this run would mix single files and shards, or shards of another K.
    """
    singles = [f"{s}.h5" for s in SPLITS if (d / f"{s}.h5").exists()]
    found = shard_count(d)
    if count is None and found is not None:
        raise StoreError(
            f"{d} holds the shards of a sharded extraction (of {found}); merge them "
            f"with `vidcls merge {d}` first, or continue that run with --shard I/{found}"
        )
    if count is not None and singles:
        raise StoreError(
            f"{d} holds a single-file store ({', '.join(singles)}); shards would "
            f"store its videos a second time: use another FEATURES_DIR, or run "
            f"without --shard (and torchrun) to continue it"
        )
    if count is not None and found not in (None, count):
        raise StoreError(
            f"{d} holds the shards of a run of {found}, not {count}: finish that run "
            f"with --shard I/{found} (torchrun --nproc_per_node={found}), or use "
            f"another FEATURES_DIR"
        )


@dataclass
class ShardSet:
    """A complete set of K shards in ``dir``: per split, the shard files in shard order."""

    dir: Path
    count: int
    reports: list[dict]
    files: dict[str, list[Path]] = field(default_factory=dict)  # splits with at least one file

    def paths(self) -> list[Path]:
        """Every shard file and report of the set (what ``vidcls merge`` removes)."""
        reports = [self.dir / shard_report_name(i, self.count) for i in range(self.count)]
        return [p for ps in self.files.values() for p in ps] + reports


def load_shard_set(d: str | os.PathLike, *, require_files: bool = True) -> ShardSet | None:
    """Check the shard set in ``d`` against the completeness rule of the module docstring.

    Args:
        d: the features directory.
        require_files: return None when ``d`` has shard reports but no shard ``.h5`` file (no
            data to read); False checks the reports anyway, as ``vidcls merge`` does.

    Returns:
        The ShardSet, or None when ``d`` holds no sharded data set.

    Raises:
        StoreError: a shard's report or file missing, unfinished, from another scan; the message
            names the file and the command that completes it.
    """
    d = Path(d)
    count = shard_count(d)
    has_files = any(p.suffix == ".h5" for p in shard_files(d))
    if count is None or (require_files and not has_files):
        return None
    reports = [_read_report(d, i, count) for i in range(count)]
    scans = {(r[SHARD_KEY].get("videos"), r[SHARD_KEY].get("scan")) for r in reports}
    if len(scans) > 1:
        raise StoreError(
            f"{d}: the {count} shard reports come from different scans of the videos "
            f"(VIDEO_ROOT changed between shard runs?); the shares may overlap or miss "
            f"videos: re-extract every shard from the same VIDEO_ROOT"
        )
    out = ShardSet(d, count, reports)
    for split in SPLITS:
        paths = [d / shard_name(split, i, count) for i in range(count)]
        for i, (p, r) in enumerate(zip(paths, reports, strict=True)):  # one of each per shard
            if not p.exists() and _ok_count(r, split) > 0:
                raise StoreError(
                    f"shard file {p} is missing: {shard_report_name(i, count)} says "
                    f"{_ok_count(r, split)} {split} videos were extracted into it; "
                    f"re-run `vidcls extract ... --shard {i}/{count}` to re-create it"
                )
        if any(p.exists() for p in paths):
            out.files[split] = [p for p in paths if p.exists()]
    return out


def _read_report(d: Path, i: int, count: int) -> dict:
    path = d / shard_report_name(i, count)
    rerun = f"run `vidcls extract VIDEO_ROOT {d} --shard {i}/{count}` (same options) to complete it"
    if not path.exists():
        raise StoreError(
            f"shard {i} of {count} is missing: {path} does not exist; the data set "
            f"is incomplete without it; {rerun}"
        )
    try:
        report = json.loads(path.read_text())
        status, shard = report["status"], report[SHARD_KEY]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"{path} is not a readable shard report ({err}); {rerun}") from None
    if status != "complete":
        raise StoreError(f"shard {i} of {count} is not complete: {path} has status {status!r}; {rerun}")
    if not isinstance(shard, dict) or (shard.get("index"), shard.get("count")) != (i, count):
        raise StoreError(
            f"{path} does not describe shard {i} of {count} (it says {shard!r}); restore the file or {rerun}"
        )
    return report


def _ok_count(report: dict, split: str) -> int:
    return int(((report.get("totals") or {}).get(split) or {}).get("ok", 0))


def open_shard_splits(
    d: Path, singles: Sequence[str], *, check_finite: bool = True
) -> dict[str, MultiFileStore]:
    """The splits of ``d`` made of shard files, as MultiFileStores (``{}`` when there are none).

    Args:
        d: the features directory. singles: splits that also have a single ``<split>.h5`` file.

    Raises:
        StoreError: a split both single and sharded, or a shard set that is incomplete or whose
            files disagree.
    """
    for split in singles:
        sharded = sorted(p.name for p in d.glob(f"{split}-*-of-*.h5") if SHARD_FILE_RE.match(p.name))
        if sharded:
            raise StoreError(
                f"{d} holds both {split}.h5 and its shards {name_ids(sharded)} (left "
                f"by `vidcls merge --keep-shards`?); a split must be one or the other: "
                f"run `vidcls merge {d}` again, or remove the one you do not want"
            )
    shard_set = load_shard_set(d)
    if shard_set is None:
        return {}
    stores = {}
    for split, paths in shard_set.files.items():
        stores[split] = MultiFileStore(paths, check_finite=check_finite)
        check_counts(stores[split], shard_set, split)
    return stores


def check_counts(store: MultiFileStore, shard_set: ShardSet, split: str) -> None:
    """Each shard file holds at least the videos its report says were extracted into it.

    ``store`` reads the files of ``shard_set.files[split]``, all named by ``shard_name``.
    """
    for part in store.parts:
        m = SHARD_FILE_RE.match(part.path.name)
        assert m is not None  # a shard set's files all have shard names
        i = int(m["index"])
        expected = _ok_count(shard_set.reports[i], split)
        if len(part) < expected:
            raise StoreError(
                f"{part.path} holds {len(part)} videos but "
                f"{shard_report_name(i, shard_set.count)} says {expected} were "
                f"extracted; the file was replaced or cut; re-extract shard "
                f"{i}/{shard_set.count} into a fresh FEATURES_DIR"
            )


def write_merged(store: MultiFileStore, path: Path, order: Sequence[int]) -> Path:
    """Write ``store``'s videos in ``order`` into one single-file store (temp name + rename)."""
    label = (lambda i: store.label_sets[i]) if store.multilabel else (lambda i: int(store.labels[i]))
    videos = ((store.video_ids[i], store.read(i), label(i), store.timestamps(i)) for i in order)
    names, dim, extractor, dtype = store.class_names, store.feature_dim, store.extractor, str(store.dtype)
    return write_store(path, videos, names, dim, extractor, dtype=dtype, multilabel=store.multilabel)


def leftover_shards(d: Path, merged_report: Path) -> list[Path]:
    """The shard files a merge killed while removing them left in ``d`` ([] if that is not so).

    They are leftovers when the merged report lists each of them under ``merged_from`` and every
    split it counts extracted videos of has its merged file: removing them loses nothing.
    """
    try:
        report = json.loads(merged_report.read_text())
        merged, totals = set(report["merged_from"]), report["totals"]
        splits = [s for s in SPLITS if (totals.get(s) or {}).get("ok")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    left = shard_files(d)
    if any(p.name not in merged for p in left) or not all((d / f"{s}.h5").exists() for s in splits):
        return []
    return left


def same_extractor(a: dict, b: dict) -> bool:
    """Whether two extractor records describe the same features (runtime keys ignored)."""
    return not extractor_differences(a, b)


def extractor_differences(a: dict, b: dict) -> list[str]:
    """The keys in which two extractor records differ, runtime keys ignored. ``family`` counts only
    when both name one: records of earlier releases have none, and the backbone decides it."""
    keys = (set(a) | set(b)) - set(RUNTIME_KEYS) - ({"family"} - (set(a) & set(b)))
    return sorted(k for k in keys if a.get(k) != b.get(k))


class MultiFileStore(LabelSets):
    """Several store files read as one split, videos concatenated in file order.

    Same interface as ``FeatureStore`` (``path``, ``class_names``, ``feature_dim``, ``extractor``,
    ``dtype``, ``format_version``, ``multilabel``, ``labels``, ``label_sets``, ``video_ids``, ``offsets``,
    ``lengths``, ``read``,
    ``timestamps``, ``close``, pickling for DataLoader workers); ``paths`` lists the files and
    ``path`` is their pattern (``train-*-of-00004.h5``), for messages.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, check_finite: bool = True):
        """Open every file and check that they form one data set.

        Raises:
            StoreError: no files, or files that disagree on class_names / feature_dim / dtype /
                multilabel / extractor, or a video id in two files; the message names both files.
        """
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise StoreError("MultiFileStore needs at least one file")
        m = SHARD_FILE_RE.match(self.paths[0].name)
        self.path = (
            self.paths[0].with_name(f"{m['split']}-*-of-{m['count']}.h5")
            if m
            else self.paths[0]
            if len(self.paths) == 1
            else self.paths[0].parent
        )
        self.parts = [FeatureStore(p, check_finite=check_finite) for p in self.paths]
        first = self.parts[0]
        self.class_names, self.feature_dim, self.extractor = (
            first.class_names,
            first.feature_dim,
            first.extractor,
        )
        self.dtype, self.format_version, self.multilabel = first.dtype, first.format_version, first.multilabel
        self._check_parts()
        self.labels = np.concatenate([s.labels for s in self.parts])
        self.video_ids = [v for s in self.parts for v in s.video_ids]
        self.lengths = np.concatenate([s.lengths for s in self.parts])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._starts = np.cumsum([0] + [len(s) for s in self.parts])  # (files+1,) first video of each
        self._set_flat = np.concatenate([s._set_flat[: s._set_offsets[-1]] for s in self.parts])
        sizes = np.concatenate([np.diff(s._set_offsets) for s in self.parts])
        self._set_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def _check_parts(self) -> None:
        ref = self.parts[0]
        for s in self.parts[1:]:
            for name in ("class_names", "feature_dim", "dtype", "multilabel"):
                if getattr(s, name) != getattr(ref, name):
                    raise StoreError(
                        f"{s.path} has {name} {getattr(s, name)} but {ref.path} has "
                        f"{getattr(ref, name)}; the files of one split must come from "
                        f"one extraction: re-extract {s.path.name} with its options"
                    )
            if not same_extractor(ref.extractor, s.extractor):
                raise StoreError(
                    f"{s.path} was extracted with other settings than {ref.path} "
                    f"({s.extractor} vs {ref.extractor}); re-extract it with the "
                    f"same options"
                )
        where: dict[str, Path] = {}
        for s in self.parts:
            for vid in s.video_ids:  # repeats within one file: FeatureStore refuses them
                if vid in where:
                    raise StoreError(
                        f"video id {vid!r} is in both {where[vid]} and {s.path}; "
                        f"each video may appear once per split: remove the stray "
                        f"file or re-extract the shards from one scan"
                    )
                where[vid] = s.path

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[FeatureStore, int]:
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"video index {i} out of range for {self.path} ({n} videos)")
        k = int(np.searchsorted(self._starts, j, side="right")) - 1
        return self.parts[k], j - int(self._starts[k])

    def read(self, i: int, rows: Rows = None) -> np.ndarray:
        """Video ``i``'s features (T, D), or only ``rows``, in the stored dtype (see ``FeatureStore.read``)."""
        store, j = self._locate(i)
        return store.read(j, rows)

    def timestamps(self, i: int, rows: Rows = None) -> np.ndarray | None:
        """Video ``i``'s per-frame timestamps in ms (only ``rows``, as ``read``), or None if its file has none."""
        store, j = self._locate(i)
        return store.timestamps(j, rows)

    def close(self) -> None:
        """Close every file's handle (a later read reopens it)."""
        for s in self.parts:
            s.close()

    def __enter__(self) -> MultiFileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MultiFileStore({str(self.path)!r}, files={len(self.parts)}, videos={len(self)}, "
            f"classes={len(self.class_names)}, dim={self.feature_dim}, dtype={self.dtype})"
        )
