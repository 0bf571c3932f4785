"""Decoding and CNN encoding of many videos at once: the engine of ``vidcls extract``.

``--decode-workers`` DataLoader worker processes each take one video at a time, decode the sampled
frames (:mod:`vidcls.features.video`), drop dark / blurry frames (:mod:`vidcls.features.quality`),
and resize + crop them (``Preprocess.geometry``) into a uint8 tensor; the main process packs frames
of consecutive videos into CNN batches of ``--batch-size`` (``FrameEncoder``) while the workers
decode ahead. The workers run under Linux's ``SCHED_IDLE`` policy (nice 19 elsewhere): on a machine
with few cores, a decoder that preempts one of the CNN's threads stalls the whole parallel region,
so decoding is kept to the moments the CNN's threads leave a core idle (measured on 2 cores: better
than nice +5); on a machine with spare cores it changes nothing.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from ..errors import ExtractError
from .backbone import FrameEncoder, Preprocess
from .quality import Quality
from .sampling import Sampling
from .video import VideoSkip, read_frames

__all__ = ["VideoResult", "decode_video", "decode_loader", "iter_features", "encode_video"]

T = TypeVar("T")

PREFETCH = 4  # videos decoded ahead per worker
WORKER_NICE = 19  # where SCHED_IDLE is not available


@dataclass
class VideoResult:
    """One video out of ``iter_features``: features (T, D) float32 and timestamps, or a skip."""

    index: int
    status: str  # "ok" | "skipped"
    features: np.ndarray | None = None
    timestamps_ms: np.ndarray | None = None
    reason: str | None = None
    detail: str | None = None
    info: dict = field(default_factory=dict)


# ---- decoding (runs in the worker processes) --------------------------------------------------
def decode_video(
    path: str | os.PathLike, sampling: Sampling, quality: Quality, preprocess: Preprocess, threads: int = 1
) -> dict:
    """Decode, quality-filter and resize/crop one video's sampled frames.

    Args:
        path: the video file.
        sampling, quality: what to take and what to drop.
        preprocess: the encoder's preprocessing; only its geometry (uint8) is applied here.
        threads: FFmpeg decoder threads.

    Returns:
        {"status": "ok", "frames": uint8 (T, 3, S, S), "timestamps_ms": (T,), "info": {...}}
        or {"status": "skipped", "reason": code, "detail": message, "info": {...}}. Never raises.
    """
    t0 = time.perf_counter()

    def on_frame(rgb: np.ndarray) -> tuple[tuple[float, float | None], torch.Tensor]:
        # quality is measured on what the CNN will see: cheaper, and resolution-independent
        x = preprocess.geometry(torch.from_numpy(rgb).permute(2, 0, 1))
        return quality.measure(x.numpy()), x

    try:
        d = read_frames(path, sampling, on_frame, threads=threads)
        bright = [q[0] for q, _ in d.items]
        sharp = [q[1] for q, _ in d.items] if quality.min_sharpness > 0 else None
        keep, counts = quality.select(np.asarray(bright), sharp)
        frames = torch.stack([x for (_, x), k in zip(d.items, keep, strict=True) if k])  # a flag per frame
        info = {
            "duration_s": round(d.duration_s, 3),
            "frames_sampled": len(d.items),
            "frames_kept": int(keep.sum()),
            **counts,
            "decoded_frames": d.decoded_frames,
            "seeks": d.seeks,
            "decode_errors": len(d.decode_errors),
            "decode_s": round(time.perf_counter() - t0, 4),
            **({"notes": d.notes} if d.notes else {}),
        }
        return {
            "status": "ok",
            "frames": frames,
            "info": info,
            "timestamps_ms": np.asarray(d.timestamps_ms, np.float64)[keep],
        }
    except VideoSkip as skip:
        return {
            "status": "skipped",
            "reason": skip.code,
            "detail": str(skip),
            "info": {"decode_s": round(time.perf_counter() - t0, 4)},
        }
    except Exception as err:  # a worker must never die on one video: report it and go on
        return {
            "status": "skipped",
            "reason": "error",
            "info": {},
            "detail": f"{path}: unexpected {type(err).__name__}: {err}; please report it",
        }


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        sampling: Sampling,
        quality: Quality,
        preprocess: Preprocess,
        threads: int,
    ):
        self.paths, self.sampling, self.quality = list(paths), sampling, quality
        self.preprocess, self.threads = preprocess, threads

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return decode_video(self.paths[i], self.sampling, self.quality, self.preprocess, self.threads)


def _identity(item: T) -> T:
    return item


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux: fall back to a plain lower priority
        try:
            os.nice(WORKER_NICE)
        except (AttributeError, OSError):  # Windows has neither
            pass


def decode_loader(
    paths: Sequence,
    sampling: Sampling,
    quality: Quality,
    preprocess: Preprocess,
    workers: int = 2,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``decode_video`` results for ``paths``, in order.

    Args:
        paths: video files. sampling, quality, preprocess: as for ``decode_video``.
        workers: worker processes (0: decode in this process).
        pin_memory: pin the frame tensors (for CUDA).

    Returns:
        The DataLoader (one dict per video).
    """
    workers = min(max(0, int(workers)), len(paths))  # a worker without a video to decode only costs a start
    # Give each worker a fair share of the cores for FFmpeg's own threads, the CNN keeps one.
    threads = max(1, (os.cpu_count() or 1) // (workers + 1))
    dataset = _DecodeDataset(paths, sampling, quality, preprocess, threads)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_identity,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH if workers else None,
    )


# ---- batching frames of several videos through the CNN ----------------------------------------
class _Pending:
    def __init__(self, index: int, item: dict, feature_dim: int):
        self.index, self.item = index, item
        self.frames = item.get("frames")
        self.total = 0 if self.frames is None else len(self.frames)
        self.next = self.done = 0
        self.cnn_s = 0.0
        self.features = np.empty((self.total, feature_dim), np.float32) if self.total else None

    def result(self) -> VideoResult:
        item = self.item
        if item["status"] != "ok":
            return VideoResult(
                self.index, "skipped", reason=item["reason"], detail=item["detail"], info=item["info"]
            )
        return VideoResult(
            self.index,
            "ok",
            self.features,
            item["timestamps_ms"],
            info={**item["info"], "cnn_s": round(self.cnn_s, 4)},
        )


class _Batcher:
    """Packs frames of consecutive videos into full CNN batches; releases videos in order."""

    def __init__(self, encoder: FrameEncoder):
        self.encoder = encoder
        self.videos: deque[_Pending] = deque()  # every video, in arrival order
        self.waiting: deque[_Pending] = deque()  # videos with frames not yet through the CNN
        self.n_waiting = 0
        self.cnn_s = 0.0

    def add(self, p: _Pending) -> list[VideoResult]:
        self.videos.append(p)
        if p.total:
            self.waiting.append(p)
            self.n_waiting += p.total
        while self.n_waiting >= self.encoder.batch_size:
            self._run_batch()
        return self._pop_done()

    def flush(self) -> list[VideoResult]:
        while self.n_waiting:
            self._run_batch()
        return self._pop_done()

    def _run_batch(self) -> None:
        pieces, owners, need = [], [], self.encoder.batch_size
        while need and self.waiting:
            p = self.waiting[0]
            assert p.frames is not None  # a waiting video still has its frames
            take = min(need, p.total - p.next)
            pieces.append(p.frames[p.next : p.next + take])
            owners.append((p, p.next, take))
            p.next += take
            need -= take
            if p.next == p.total:
                self.waiting.popleft()
        x = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        t0 = time.perf_counter()
        y = self.encoder.encode(x)
        dt = time.perf_counter() - t0
        self.cnn_s += dt
        self.n_waiting -= len(x)
        offset = 0
        for p, start, n in owners:
            assert p.features is not None  # allocated for every video with frames
            p.features[start : start + n] = y[offset : offset + n]
            offset += n
            p.done += n
            p.cnn_s += dt * n / len(x)
            if p.done == p.total:
                p.frames = None  # release the frames (shared memory) as soon as possible

    def _pop_done(self) -> list[VideoResult]:
        out = []
        while self.videos and self.videos[0].done == self.videos[0].total:
            out.append(self.videos.popleft().result())
        return out


def iter_features(
    paths: Sequence,
    encoder: FrameEncoder,
    sampling: Sampling,
    quality: Quality,
    *,
    decode_workers: int = 2,
    stats: dict | None = None,
) -> Iterator[VideoResult]:
    """Features of each video in ``paths``, in order; broken videos come out as skips.

    Decoding runs in ``decode_workers`` processes while this process runs the CNN.

    Args:
        paths: video files.
        encoder: the FrameEncoder.
        sampling, quality: frame selection.
        decode_workers: worker processes (0: decode here, no overlap).
        stats: if given, receives {"cnn_s": seconds spent in the CNN}.

    Yields:
        VideoResult per video; ``index`` is its position in ``paths``.

    Raises:
        ExtractError: a decode worker died (an FFmpeg crash on some file, or out of shared memory).
    """
    if not len(paths):
        return
    loader = decode_loader(
        paths, sampling, quality, encoder.preprocess, decode_workers, pin_memory=encoder.device.type == "cuda"
    )
    batcher = _Batcher(encoder)
    it = iter(loader)
    for index in range(len(paths)):
        try:
            item = next(it)
        except RuntimeError as err:
            if "DataLoader worker" not in str(err):
                raise
            near = ", ".join(str(p) for p in paths[index : index + 2 * max(1, decode_workers) * PREFETCH])
            raise ExtractError(
                f"a decode worker died ({err}) while decoding one of: {near}. Every "
                f"finished video is stored: re-run the same command to continue. "
                f"Out of shared memory (/dev/shm, small in containers)? Raise it or "
                f"use --decode-workers 0. Again on the same files? Move them away"
            ) from None
        yield from batcher.add(_Pending(index, item, encoder.feature_dim))
        if stats is not None:
            stats["cnn_s"] = batcher.cnn_s
    yield from batcher.flush()
    if stats is not None:
        stats["cnn_s"] = batcher.cnn_s


def encode_video(
    path: str | os.PathLike, encoder: FrameEncoder, sampling: Sampling, quality: Quality
) -> VideoResult:
    """Features of one video, exactly as ``extract`` computes them (for prediction).

    Returns:
        VideoResult (status "ok" with features and timestamps, or "skipped" with the reason).
    """
    return next(iter_features([path], encoder, sampling, quality, decode_workers=0))
