"""``vidcls extract``: a folder of videos -> the feature store (train.h5 / val.h5 / test.h5).

The videos are found by :mod:`vidcls.features.folders` (or listed with their labels, several a
video for a multi-label store, by :mod:`vidcls.features.labels_csv`), decoded and encoded by
:mod:`vidcls.features.pipeline` (decode worker processes beside the CNN), and each finished video
is appended to its split's ``FeatureWriter``; :mod:`vidcls.features.report` keeps
``extract_report.json`` up to date.

Resume: the store is committed after every video (``flush_every=1``), so a crash or SIGKILL
loses only the videos whose frames were in flight. Re-running the same command skips every
video id already stored (with the class layout: already stored in any split, where it stays)
and extracts the rest; skipped (broken) videos are tried again, which is cheap, and picks up
files that were repaired in between. A store made with other extractor settings is refused.

Sharding: ``--shard I/K`` (separate machines) or ``torchrun --nproc_per_node=K -m vidcls extract``
(RANK/WORLD_SIZE) makes this process extract shard I of K: a share of the videos balanced by file
size (``vidcls.store.shards.assign_shards`` over every video found, so a re-run shard gets the same
share and resumes it) into ``<split>-0000I-of-0000K.h5`` and ``extract_report-0000I-of-0000K.json``.
The processes never talk to each other (no process group). Training reads the shards as they are;
``merge`` (``vidcls merge``) turns them into the files one process would have written; both live in
:mod:`vidcls.features.sharding`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__
from ..errors import ExtractError, StoreError
from ..store.reader import SPLITS, FeatureStore
from ..store.shards import check_output_dir, extractor_differences, shard_name
from ..store.writer import FeatureWriter
from ..utils.device import check_decode_workers
from ..utils.dist import Dist, env_dist
from .backbone import FrameEncoder, keep_freed_memory
from .folders import VideoJob, VideoSet, scan_videos
from .labels_csv import check_stored_labels, scan_labelled_videos
from .pipeline import VideoResult, decode_loader, decode_video, encode_video, iter_features
from .quality import Quality
from .report import ExtractReport, format_summary
from .sampling import Sampling
from .sharding import merge, resolve_shard, take_share  # merge: also importable from here

__all__ = [
    "ExtractError",
    "ExtractOptions",
    "VideoResult",
    "decode_video",
    "decode_loader",
    "iter_features",
    "encode_video",
    "extract",
    "format_summary",
    "merge",
]

# RUNTIME_KEYS (from vidcls.store.shards): extractor keys that may differ between a store and a
# resumed run, or between shards (they do not change features)
FRAME_RULE = "the last frame at or before each sampled time; each frame used once"


@dataclass(frozen=True)
class ExtractOptions:
    """The settings of one extraction (the flags of ``vidcls extract``, same names and defaults).

    ``sampling`` and ``quality`` are built from the frame options on creation, which checks them.

    Raises:
        ConfigError: a bad --fps / --frames / --max-frames / --min-brightness / --min-sharpness.
    """

    backbone: str = "efficientnet_v2_s"
    weights: str = "DEFAULT"
    fps: float | None = None
    frames: int | None = None
    max_frames: int = 64
    image_size: int | str | None = None
    batch_size: int = 32
    device: str = "auto"
    decode_workers: int = 2
    split: str | Sequence = "70,20,10"
    seed: int = 42
    min_brightness: float = 25.0
    min_sharpness: float = 0.0
    dtype: str = "float16"
    sampling: Sampling = field(init=False, repr=False, compare=False)
    quality: Quality = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_decode_workers(self.decode_workers)
        object.__setattr__(self, "sampling", Sampling(self.fps, self.frames, self.max_frames))
        object.__setattr__(self, "quality", Quality(self.min_brightness, self.min_sharpness))

    def record(self) -> dict:
        """The options as given (weights and split as text), for extract_report.json."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return {**out, "weights": str(self.weights), "split": str(self.split)}

    def encoder(self, device: str | None = None) -> FrameEncoder:
        """The frame CNN these options ask for (on ``device`` instead of theirs, if given).

        Raises:
            BackboneError: unknown backbone, bad weights, image size or batch size.
        """
        return FrameEncoder(
            self.backbone,
            self.weights,
            image_size=self.image_size,
            device=device or self.device,
            batch_size=self.batch_size,
        )


# ---- writing ----------------------------------------------------------------------------------
class _Writers:
    """One FeatureWriter per split, opened on the split's first video (no empty split files);
    a sharded run writes its own shard's files."""

    def __init__(
        self,
        out_dir: Path,
        videos: VideoSet,
        feature_dim: int,
        extractor: dict,
        dtype: str,
        shard: tuple[int, int] | None = None,
    ):
        self.out_dir, self.splits_given, self.shard = out_dir, videos.splits_given, shard
        self.args, self.multilabel = (videos.class_names, feature_dim, extractor), videos.multilabel
        self.dtype = dtype
        self.writers: dict[str, FeatureWriter] = {}
        self.stored: dict[str, set] = {s: set() for s in SPLITS}
        for split in SPLITS:
            path = self.path(split)
            if path.exists():
                store = FeatureStore(path, check_finite=False)
                _check_compatible(path, store, videos, extractor)
                if videos.labels_csv is not None:
                    check_stored_labels(path, store, videos.jobs, f"--labels {videos.labels_csv}")
                self.stored[split] = set(store.video_ids)
                store.close()

    def stored_in(self, job: VideoJob) -> str | None:
        """The split already holding ``job`` (splits not given: any split), or None."""
        if self.splits_given:
            assert job.split is not None  # the input names every video's split
            return job.split if job.video_id in self.stored[job.split] else None
        return next((s for s in SPLITS if job.video_id in self.stored[s]), None)

    def path(self, split: str) -> Path:
        name = f"{split}.h5" if self.shard is None else shard_name(split, *self.shard)
        return self.out_dir / name

    def append(self, job: VideoJob, features: np.ndarray, timestamps_ms: np.ndarray | None) -> str | None:
        """Store one video (committed at once); returns why it was refused, or None.

        Raises:
            StoreError: the split file cannot be opened (locked by another run, unreadable).
        """
        split = job.split
        assert split is not None  # scan_videos gives every video it keeps a split
        if split not in self.writers:
            self.writers[split] = FeatureWriter(
                self.path(split), *self.args, dtype=self.dtype, flush_every=1, multilabel=self.multilabel
            )  # resume=True, the default: continue the file of an earlier run
        label = job.label_set if self.multilabel else job.label
        try:
            self.writers[split].append(job.video_id, features, label, timestamps_ms)
        except StoreError as err:  # this video's features (NaN/Inf): the file itself is fine
            return str(err)
        self.stored[split].add(job.video_id)
        return None

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _check_compatible(path: Path, store: FeatureStore, videos: VideoSet, extractor: dict) -> None:
    restart = f"use another FEATURES_DIR, or move {path.parent} away to start over"
    if store.class_names != videos.class_names:
        now = videos.class_names
        raise ExtractError(
            f"{path} holds classes {store.class_names} but the videos now have {now}; {restart}"
        )
    if store.multilabel != videos.multilabel:
        kind = {True: "multi-label", False: "single-label"}
        raise ExtractError(
            f"{path} is a {kind[store.multilabel]} store but the videos are now "
            f"{kind[videos.multilabel]} (a video with several labels makes a multi-label store); {restart}"
        )
    diff = [
        f"{k}: {store.extractor.get(k)!r} in the store, {extractor.get(k)!r} now"
        for k in extractor_differences(store.extractor, extractor)
    ]
    if diff:
        raise ExtractError(
            f"{path} was extracted with other settings; resuming would mix "
            "features. Differences:\n  "
            + "\n  ".join(diff)
            + "\nRe-run with the store's settings, or use another FEATURES_DIR"
        )


def _rank_device(device: str, dist: Dist) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK) when the device is auto or cuda."""
    if dist.active and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{dist.local_rank % torch.cuda.device_count()}"
    return device


# ---- the command ------------------------------------------------------------------------------
def extract(
    video_root: str | os.PathLike,
    features_dir: str | os.PathLike,
    options: ExtractOptions | None = None,
    *,
    labels: str | os.PathLike | None = None,
    shard: str | tuple[int, int] | None = None,
    progress: bool | None = None,
    log: Callable = print,
    **settings: Any,
) -> dict:
    """Extract per-frame features of every video under ``video_root`` into ``features_dir``.

    Args:
        video_root: VIDEO_ROOT (see :mod:`vidcls.features.folders` for the layouts).
        features_dir: output: {train,val,test}.h5 and extract_report.json.
        options: the settings (backbone, weights, sampling, quality, split ...); or give them as
            keyword ``settings`` with ExtractOptions' field names (``backbone="resnet18", fps=2``).
        labels: a CSV of videos and labels to read instead of the folder layout (see ``labels_csv``).
        shard: ``"I/K"`` or (I, K): extract only shard I (0-based) of K, into shard files (see the
            module docstring). Under torchrun the shard is RANK/WORLD_SIZE; None: a whole run.
        progress: show a progress bar (None: only on a terminal). log: where messages go.

    Returns:
        The final report (as written to extract_report.json).

    Raises:
        VidclsError (ConfigError, ExtractError, BackboneError, StoreError): bad options, input or
            output, with the fix in the message.
    """
    if options is None:
        options = ExtractOptions(**settings)
    elif settings:
        raise TypeError(f"give either options or settings, not both (got {sorted(settings)})")
    dist = env_dist()
    ex = _start(
        video_root,
        Path(features_dir),
        options,
        log,
        resolve_shard(shard, dist),
        _rank_device(options.device, dist),
        labels=labels,
    )
    status = "failed"
    run: dict[str, Any] = {}  # throughput figures, filled by _run (also when stopped)
    try:
        _run(ex, progress, run)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        log(
            f"\ninterrupted: every finished video is stored in {ex.out_dir}; re-run the same "
            f"command to continue"
        )
        raise
    finally:
        ex.writers.close()
        final = ex.report.finish(status, run)
    return final


@dataclass
class _Extraction:
    """One run of ``extract``: what it reads, runs and writes."""

    options: ExtractOptions
    out_dir: Path
    videos: VideoSet
    encoder: FrameEncoder
    writers: _Writers
    report: ExtractReport
    todo: list  # the VideoJobs not in the store yet


def _start(
    video_root: str | os.PathLike,
    out_dir: Path,
    options: ExtractOptions,
    log: Callable,
    shard: tuple[int, int] | None,
    device: str,
    *,
    labels: str | os.PathLike | None = None,
) -> _Extraction:
    """Scan the videos, build the CNN, open the store and the report; nothing is extracted yet."""
    if labels is None:
        videos = scan_videos(video_root, split=options.split, seed=options.seed)
    else:
        videos = scan_labelled_videos(video_root, labels, split=options.split, seed=options.seed)
    check_output_dir(out_dir, None if shard is None else shard[1])
    found, record = len(videos.jobs), None
    if shard is not None:
        videos, record = take_share(videos, *shard)
    encoder = options.encoder(device)
    if encoder.device.type == "cpu":
        keep_freed_memory()  # ~2.5x CNN throughput on CPU; this process exists to run the CNN
    extractor = _describe(encoder, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = _Writers(out_dir, videos, encoder.feature_dim, extractor, options.dtype, shard)
    report = ExtractReport(out_dir, videos, extractor, options.record(), writers.stored_in, shard=record)
    if videos.labels_csv is not None:
        report.data["labels_csv"] = videos.labels_csv  # next to video_root: where the videos came from
    todo = [job for job in videos.jobs if writers.stored_in(job) is None]
    part = (
        ""
        if shard is None
        else (
            f"shard {shard[0]}/{shard[1]} of {found} videos ({sum(j.size for j in videos.jobs) >> 20} MiB): "
        )
    )
    layout = f"{videos.layout} layout" + (", multi-label" if videos.multilabel else "")
    log(
        f"extract: {part}{len(videos.jobs)} videos in {len(videos.class_names)} classes ({layout}), "
        f"{len(videos.jobs) - len(todo)} already stored, {len(todo)} to do; "
        f"{options.backbone} ({extractor['weights']}) on {encoder.device}, {encoder.feature_dim}-d"
    )
    if videos.skipped_links:
        log(
            f"{len(videos.skipped_links)} folder link(s) not followed, e.g. "
            f"{videos.skipped_links[0]['detail']}"
        )
    report.save(force=True)
    return _Extraction(options, out_dir, videos, encoder, writers, report, todo)


def _describe(encoder: FrameEncoder, options: ExtractOptions) -> dict:
    """The extractor description stored with the features (a resumed run must match it)."""
    return {
        **encoder.description,
        "sampling": options.sampling.describe(),
        "quality": options.quality.describe(),
        "frame_rule": FRAME_RULE,
        "dtype": str(options.dtype),
        "precision": encoder.precision,
        "vidcls_version": __version__,
    }


def _run(ex: _Extraction, progress: bool | None, run: dict) -> None:
    """Extract ``ex.todo`` into the store; fill ``run`` with throughput figures (also when stopped)."""
    t0, stats = time.perf_counter(), {"cnn_s": 0.0}
    new_videos = new_frames = 0
    bar = tqdm(
        total=len(ex.todo),
        unit="video",
        desc="extract",
        dynamic_ncols=True,
        disable=None if progress is None else not progress,
    )
    try:
        for r in iter_features(
            [j.path for j in ex.todo],
            ex.encoder,
            ex.options.sampling,
            ex.options.quality,
            decode_workers=ex.options.decode_workers,
            stats=stats,
        ):
            stored = _store(ex, ex.todo[r.index], r)
            if stored is not None:
                new_videos, new_frames = new_videos + 1, new_frames + stored
            bar.update(1)
            bar.set_postfix(frames_per_s=f"{new_frames / max(time.perf_counter() - t0, 1e-9):.1f}")
    finally:
        bar.close()
        wall = time.perf_counter() - t0
        run.update(
            new_videos=new_videos,
            new_frames=new_frames,
            wall_s=round(wall, 3),
            frames_per_s=round(new_frames / wall, 3) if wall > 0 else 0.0,
            cnn_s=round(stats["cnn_s"], 3),
            cnn_busy_share=round(min(1.0, stats["cnn_s"] / wall), 4) if wall > 0 else 0.0,
            decode_workers=ex.options.decode_workers,
        )


def _store(ex: _Extraction, job: VideoJob, r: VideoResult) -> int | None:
    """Store one video's result and record it in the report; returns its frame count, or None
    when it was skipped."""
    stored = None
    if r.status != "ok":
        assert r.reason is not None and r.detail is not None  # a skip always says why
        ex.report.skip(job, r.reason, r.detail, r.info)
    else:
        assert r.features is not None  # an ok video has at least one frame's features
        if refused := ex.writers.append(job, r.features, r.timestamps_ms):
            ex.report.skip(job, "bad_features", refused, r.info)
        else:
            ex.report.ok(job, r.info)
            stored = len(r.features)
    ex.report.save()
    return stored
