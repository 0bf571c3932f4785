"""Sharded extraction: which shard this process extracts, its share of the videos, and ``vidcls merge``.

``--shard I/K`` (separate machines) or ``torchrun --nproc_per_node=K -m vidcls extract`` (RANK/WORLD_SIZE)
makes a process extract shard I of K (:mod:`vidcls.features.extract`); ``merge`` turns the K shards into
the files one process would have written. The shard files and when a set of them is complete:
:mod:`vidcls.store.shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError, StoreError
from ..store.shards import (
    MultiFileStore,
    assign_shards,
    check_counts,
    leftover_shards,
    load_shard_set,
    write_merged,
)
from ..utils.dist import Dist
from ..utils.fs import atomic_write_json
from .folders import VideoSet
from .report import REPORT_NAME, merge_reports


def parse_shard(shard: str | Sequence[int | str]) -> tuple[int, int]:
    """``"1/4"`` (or (1, 4)) -> (1, 4): shard 1 (0-based) of 4.

    Raises:
        ConfigError: not two integers I/K with 0 <= I < K.
    """
    parts = list(shard) if isinstance(shard, (tuple, list)) else str(shard).split("/")
    try:
        index, count = (int(p) for p in parts)
    except (TypeError, ValueError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise ConfigError(f"--shard must be I/K with 0 <= I < K (0-based: 0/4, 1/4, 2/4, 3/4), got {shard!r}")
    return index, count


def resolve_shard(shard: str | Sequence[int | str] | None, dist: Dist) -> tuple[int, int] | None:
    """This process's shard: RANK/WORLD_SIZE under torchrun, else ``shard``, else None (whole run).

    Raises:
        ConfigError: a bad ``shard``, or one that contradicts torchrun's RANK/WORLD_SIZE.
    """
    given = None if shard is None else parse_shard(shard)
    if not dist.active:
        return given
    if given is not None and given != (dist.rank, dist.world):
        raise ConfigError(
            f"--shard {given[0]}/{given[1]} contradicts torchrun's RANK={dist.rank}, "
            f"WORLD_SIZE={dist.world}; under torchrun leave --shard out (each rank "
            f"extracts shard RANK/WORLD_SIZE)"
        )
    return dist.rank, dist.world


def take_share(videos: VideoSet, index: int, count: int) -> tuple[VideoSet, dict]:
    """Shard ``index`` of ``count``'s share of ``videos``, and the shard record for its report.

    The share is dealt by size over every video found, stored or not, so it does not change when
    the shard is re-run. Files rejected before decoding are listed by shard 0 only, so the merged
    report lists them once. The record's ``scan`` fingerprints all videos found (split, id, size):
    shards of one data set must agree on it.
    """
    owners = assign_shards([job.size for job in videos.jobs], count)
    share = [job for job, owner in zip(videos.jobs, owners, strict=True) if owner == index]  # one owner each
    listing = "\n".join(f"{j.split}\t{j.video_id}\t{j.size}" for j in videos.jobs)
    record = {
        "index": index,
        "count": count,
        "videos": len(videos.jobs),
        "scan": hashlib.sha256(listing.encode()).hexdigest()[:16],
    }
    return replace(videos, jobs=share, skipped=videos.skipped if index == 0 else []), record


# ---- merging shards ---------------------------------------------------------------------------
def merge(features_dir: str | os.PathLike, *, keep_shards: bool = False, log: Callable = print) -> dict:
    """``vidcls merge``: the shards of a sharded extraction -> train.h5 / val.h5 / test.h5.

    The merged files hold what one process would have written (same videos, features and order:
    by split, then path, as in the shard reports) and extract_report.json is that run's report up
    to timings. Each file goes to a temp name and is renamed into place; the shards are removed
    (unless ``keep_shards``) only after every merged file and the report are complete, and a merge
    killed while removing them finishes the removal when run again.

    Returns:
        The merged report.

    Raises:
        StoreError: no shards, or a set that is incomplete or inconsistent (the shard named).
    """
    d = Path(features_dir)
    try:
        shard_set = load_shard_set(d, require_files=False)
    except StoreError:
        left = leftover_shards(d, d / REPORT_NAME)
        if not left:
            raise
        for p in left:
            p.unlink(missing_ok=True)
        log(f"removed {len(left)} shard file(s) left behind by an earlier merge into {d}")
        return json.loads((d / REPORT_NAME).read_text())
    if shard_set is None:
        raise StoreError(
            f"{d} holds no shards (<split>-0000I-of-0000K.h5 with "
            f"extract_report-0000I-of-0000K.json); nothing to merge"
        )
    report = merge_reports(shard_set.reports, d)
    position = {(e["split"], e["video_id"]): n for n, e in enumerate(report["videos"])}
    for split, paths in shard_set.files.items():
        with MultiFileStore(paths, check_finite=False) as store:  # the writer checks every frame
            check_counts(store, shard_set, split)
            order = sorted(
                range(len(store)), key=lambda i: (position.get((split, store.video_ids[i]), len(position)), i)
            )
            log(f"{split}.h5: {len(store)} videos from {len(paths)} shard file(s)")
            write_merged(store, d / f"{split}.h5", order)
    report["merged_from"] = [p.name for p in shard_set.paths()]
    atomic_write_json(d / REPORT_NAME, report)
    if not keep_shards:
        for p in shard_set.paths():  # the reports last: they say whether the set is complete
            p.unlink(missing_ok=True)
    return report
