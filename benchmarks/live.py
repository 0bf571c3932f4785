"""Latency of ``vidcls watch``: a live MPEG-TS stream written at real-time pace into a pipe.

    python benchmarks/live.py [--seconds 60] [--size 320x240] [--video-fps 25] [--segments 4s] [--stride 2s]
    python benchmarks/live.py --smoke

A writer thread encodes moving-square frames with x264 (zerolatency) at the stream's own pace into a
pipe; ``vidcls.predict.live.watch`` reads the other end with a small real run (the demo's Lite0
encoder with the real ImageNet weights at 2 frames per second, built once by
``benchmarks/long_video.py``'s ``build_run``) and gives one record per window. Printed: the records'
``latency_s`` (from the window's last frame out of the decoder to its record: CNN of the last frames +
the model) and the delay from the writing of that frame's source frame to its record (what a viewer of
the stream sees, decoding and probing included), median / p95 / max. Last line: ``latency_p95_s=...``
(the target: <= 1.5 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from long_video import build_run  # benchmarks/long_video.py
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke


class Writer(threading.Thread):
    """MPEG-TS of ``n`` frames at ``fps`` pace into the pipe ``fd``; ``wrote[i]``: when frame i was sent."""

    def __init__(self, fd: int, n: int, size: tuple[int, int], fps: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.n, self.size, self.fps = fd, n, size, fps
        self.wrote: list[float] = []

    def write(self, data: bytes) -> int:
        view = memoryview(bytes(data))
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def run(self) -> None:
        w, h = self.size
        out = av.open(self, "w", format="mpegts", options={"flush_packets": "1"}, buffer_size=188 * 7)
        s = out.add_stream("libx264", rate=self.fps)
        s.width, s.height, s.pix_fmt, s.time_base = w, h, "yuv420p", Fraction(1, self.fps)
        s.options = {"preset": "ultrafast", "tune": "zerolatency"}
        base = np.random.default_rng(0).integers(0, 200, (h, w, 3)).astype(np.uint8)
        t0 = time.monotonic()
        for i in range(self.n):
            time.sleep(max(0.0, t0 + i / self.fps - time.monotonic()))
            f = base.copy()
            x = (4 * i) % (w - h // 3)
            f[h // 3 : 2 * h // 3, x : x + h // 3] = (
                (220, 40, 40) if (i // (5 * self.fps)) % 2 else (40, 60, 220)
            )
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, self.fps)
            out.mux(s.encode(frame))
            self.wrote.append(time.monotonic())
        out.mux(s.encode(None))
        out.close()
        os.close(self.fd)


def stats(values: list[float]) -> str:
    v = np.asarray(values)
    return f"median {np.median(v):.3f} s, p95 {np.percentile(v, 95):.3f} s, max {v.max():.3f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--video-fps", type=int, default=25)
    ap.add_argument("--segments", default="4s")
    ap.add_argument("--stride", default="2s")
    ap.add_argument("--work", default="runs/bench-long-video", help="where the run is built (kept, reused)")
    args = smoke_parse(ap, {"seconds": 6.0, "work": None, "size": "96x72"})
    import vidcls
    from vidcls.predict.live import watch

    root = Path(args.work) if args.work else scratch("live")
    run = build_run(root, smoke=args.smoke)
    p = vidcls.load(run, device="cpu")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    r, w = os.pipe()
    writer = Writer(w, int(args.seconds * args.video_fps), size, args.video_fps)  # type: ignore[arg-type]
    writer.start()
    latencies, seen = [], []
    for rec in watch(p, f"pipe:{r}", window=args.segments, stride=args.stride, timeout_s=10.0):
        now = time.monotonic()
        latencies.append(rec["latency_s"])
        last = int(
            round((rec["end_s"] - 1.0 / p.fps_) * args.video_fps)
        )  # the source frame of its last frame
        if last < len(writer.wrote):
            seen.append(now - writer.wrote[last])
    writer.join()
    print(f"{len(latencies)} windows of {args.segments} every {args.stride} over {args.seconds:g} s of {args.size} at "
          f"{args.video_fps} fps, run {p.extractor_['backbone']} at {p.fps_:g} fps")  # fmt: skip
    print(f"latency_s (last frame decoded -> record): {stats(latencies)}")
    print(f"source frame written -> record: {stats(seen)}")
    print(f"latency_p95_s={np.percentile(latencies, 95):.3f}")


if __name__ == "__main__":
    main()
