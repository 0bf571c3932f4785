"""Memory and time of long videos: peak RSS flat in the video's length, seconds per minute of video.

    python benchmarks/long_video.py [--minutes 1 60] [--size 96x72] [--video-fps 25] [--segments 30s]
    python benchmarks/long_video.py --smoke

Writes one video per length with PyAV (low resolution, a moving square whose colour changes every
``--scene-s`` seconds, x264), builds a small real run with the demo (its Lite0 encoder with the real
ImageNet weights, 2 frames per second, 1 member, 1 epoch), then measures, each in a fresh process:

- ``segments``: ``vidcls predict RUN VIDEO --segments 30s`` (the whole video streamed at the run's
  rate: decode, CNN, the windows' model, the JSON line);
- ``extract``: the features ``vidcls extract`` stores for the video (frames thinned to the run's
  ``max_frames`` over the whole video, decoded with seeks), as ``predict`` without ``--segments``;

and prints each process's peak RSS (``ru_maxrss``) and seconds, and seconds per minute of video.
Peak RSS is given twice: the process's (``ru_maxrss``, which torch's import alone may set) and the
largest resident set seen while the process works on the video (sampled every 20 ms after the
imports). The last line is ``rss_ratio_longest_over_shortest=<the largest ratio of either, over the
modes>`` (the target: <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke

MODES = ("segments", "extract")


def write_video(path: Path, minutes: float, size: tuple[int, int], fps: int, scene_s: float) -> Path:
    """A ``minutes``-long x264 video, frame by frame (never the whole video in memory)."""
    import av

    if path.exists():
        return path
    w, h = size
    rng = np.random.default_rng(0)
    colors = rng.integers(40, 230, (64, 3)).astype(np.uint8)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = Fraction(1, fps)
        s.options = {"preset": "ultrafast", "crf": "23"}
        base = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for i in range(int(round(minutes * 60 * fps))):
            scene = int(i / fps // scene_s)
            f = base.copy()
            x = (2 * i) % max(1, w - h // 3)
            f[h // 3 : 2 * h // 3, x : x + h // 3] = colors[scene % len(colors)]
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    tmp.rename(path)
    return path


def build_run(root: Path, smoke: bool) -> Path:
    from vidcls.demo import run_demo

    run = root / "run"
    if not (run / "summary.json").exists() and not (run / "bilstm_attn" / "summary.json").exists():
        kw = {"clips_per_class": 4 if smoke else 8, "epochs": 1, "members": 1, "plots": False, "predict": 0}
        if smoke:
            kw.update(backbone="resnet18", weights="none", image_size=64)
        run_demo(run, log=lambda *a: None, **kw)
    return run / "bilstm_attn"


class RssSampler(threading.Thread):
    """The largest resident set of this process seen while it runs (every 20 ms, /proc/self/statm)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb, self.stop = 0.0, threading.Event()
        self.page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def run(self) -> None:
        while not self.stop.wait(0.02):
            with open("/proc/self/statm") as fh:
                self.peak_mb = max(self.peak_mb, int(fh.read().split()[1]) * self.page_mb)


def child(mode: str, video: str, run: str, segments: str) -> None:
    """One measurement in this fresh process; prints {"seconds", "rss_mb", "work_rss_mb", ...} as JSON.

    rss_mb: the process's peak (ru_maxrss, imports included); work_rss_mb: the peak while it works on
    the video, after torch and vidcls are imported (what the video's length could change).
    """
    import torch  # noqa: F401  (imported before the sampler starts: its peak is the same for every video)

    import vidcls  # noqa: F401

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    out: dict = {"mode": mode}
    if mode == "segments":
        from vidcls.cli import main

        result = Path(run).parent / f"segments-{Path(video).stem}.jsonl"
        result.unlink(missing_ok=True)
        rc = main(["predict", run, video, "--segments", segments, "--output", str(result), "--device", "cpu"])
        rec = json.loads(result.read_text().splitlines()[0])
        out.update(rc=rc, windows=len(rec["segments"]), spans=len(rec["spans"]), error=rec.get("error"))
    else:
        import vidcls
        from vidcls.features.pipeline import encode_video

        p = vidcls.load(run, device="cpu")
        got = encode_video(video, p.encoder_, p.sampling_, p.quality_)
        out.update(frames=0 if got.features is None else len(got.features), status=got.status)
    out["seconds"] = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    out["work_rss_mb"] = sampler.peak_mb
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(out))


def measure(mode: str, video: Path, run: Path, segments: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(video), str(run), segments]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {video} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 60.0])
    ap.add_argument("--size", default="96x72", help="WxH of the written videos")
    ap.add_argument("--video-fps", type=int, default=25)
    ap.add_argument("--scene-s", type=float, default=30.0, help="the square's colour changes this often")
    ap.add_argument("--segments", default="30s", help="--segments of vidcls predict")
    ap.add_argument("--work", default="runs/bench-long-video", help="videos and the run (kept, reused)")
    args = smoke_parse(ap, {"minutes": [0.1, 0.3], "work": None, "segments": "4s", "scene_s": 3.0})
    root = Path(args.work) if args.work else scratch("long-video")
    root.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    run = build_run(root, smoke=args.smoke)
    rows = {}
    for minutes in args.minutes:
        video = write_video(root / f"long-{minutes:g}min.mp4", minutes, size, args.video_fps, args.scene_s)
        for mode in MODES:
            r = measure(mode, video, run, args.segments)
            r["s_per_min"] = r["seconds"] / minutes
            rows[(minutes, mode)] = r
            print(
                f"{minutes:6g} min  {mode:8s}  peak RSS {r['rss_mb']:7.1f} MB (working: {r['work_rss_mb']:7.1f})  "
                f"{r['seconds']:7.1f} s  "
                f"{r['s_per_min']:6.2f} s per minute of video  "
                + json.dumps(
                    {
                        k: v
                        for k, v in r.items()
                        if k not in ("mode", "seconds", "s_per_min") and "rss" not in k
                    }
                ),
                flush=True,
            )
    lo, hi = min(args.minutes), max(args.minutes)
    ratios = {}
    for m in MODES:
        whole, work = (rows[(hi, m)][k] / rows[(lo, m)][k] for k in ("rss_mb", "work_rss_mb"))
        ratios[m] = max(whole, work)
        print(f"{m}: {hi:g} min / {lo:g} min: peak RSS {whole:.3f}, while working {work:.3f}")
    print(f"seconds_per_minute_segments={rows[(hi, 'segments')]['s_per_min']:.2f}")
    print(f"rss_ratio_longest_over_shortest={max(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
