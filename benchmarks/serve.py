"""Latency and throughput of ``vidcls serve``: the features endpoint and a short clip upload.

    python benchmarks/serve.py                      # builds a tiny run in runs/bench-serve first
    python benchmarks/serve.py RUN_DIR [--clip CLIP.mp4] [--requests 200] [--uploads 40] [--concurrency 8]

The server runs as users start it (``python -m vidcls serve`` on a loopback port, CPU). For each
endpoint: latency p50/p95 of sequential requests, then requests/s with ``--concurrency`` clients.
Without RUN_DIR the run is made from generated demo clips (resnet18 with random weights at 112 px,
1 frame/s, a 1-member BiLSTM), so the clip figures include decoding and the frame CNN.
Prints name=value lines; the last one is ``features_requests_per_s=<float>``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from smoke import scratch, smoke_parse  # benchmarks/smoke.py: --smoke


def make_run(work: Path, per_class: int = 6, epochs: int = 3) -> Path:
    from vidcls.cli import main
    from vidcls.features.democlips import write_demo_clips

    run = work / "run"
    if (run / "final.json").exists():
        return run
    write_demo_clips(work / "videos", per_class=per_class)
    assert (
        main(
            [
                "extract",
                str(work / "videos"),
                str(work / "features"),
                "--backbone",
                "resnet18",
                "--weights",
                "none",
                "--image-size",
                "112",
                "--fps",
                "1",
                "--device",
                "cpu",
                "--decode-workers",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                str(work / "features"),
                str(run),
                "--epochs",
                str(epochs),
                "--members",
                "1",
                "--hidden-dim",
                "32",
                "--layers",
                "1",
                "--heads",
                "2",
                "--workers",
                "0",
                "--no-plots",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return run


def start_server(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "VIDCLS_API_KEY"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vidcls",
                "serve",
                str(run),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--max-queue",
                "64",
                "--max-uploads",
                "64",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            sys.exit(f"the server stopped:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def measure(send, n: int, concurrency: int) -> dict:
    """p50/p95 latency (ms) of ``n`` sequential calls, then requests/s of ``n`` calls ``concurrency`` at a time."""
    send(0)  # warm-up
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        send(i)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(n)))
    rate = n / (time.perf_counter() - t0)
    return {
        "p50_ms": 1000 * float(np.percentile(lat, 50)),
        "p95_ms": 1000 * float(np.percentile(lat, 95)),
        "requests_per_s": rate,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a finished run (default: build a tiny one)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-serve"), help="where the tiny run is built")
    p.add_argument("--clip", type=Path, help="the clip to upload (default: a generated 3-6 s clip)")
    p.add_argument("--frames", type=int, default=32, help="T of the feature requests (32)")
    p.add_argument("--requests", type=int, default=200, help="feature requests per measurement (200)")
    p.add_argument("--uploads", type=int, default=40, help="clip uploads per measurement (40)")
    p.add_argument("--concurrency", type=int, default=8)
    args = smoke_parse(p, {"requests": 6, "uploads": 2, "concurrency": 2, "frames": 8})
    if args.smoke and args.work == Path("runs/bench-serve"):
        args.work = scratch("serve")
    args.work.mkdir(parents=True, exist_ok=True)
    run = args.run_dir or (make_run(args.work, 3, 1) if args.smoke else make_run(args.work))
    clip = args.clip
    if clip is None:
        from vidcls.features.democlips import clip_frames, write_video

        clip = write_video(args.work / "bench_clip.mp4", clip_frames("camera", 999, seconds=(4.0, 4.0)))
    data = clip.read_bytes()
    proc, url = start_server(run, args.work / "server.log")
    try:
        with httpx.Client(
            base_url=url, timeout=300, limits=httpx.Limits(max_connections=args.concurrency)
        ) as c:
            model = c.get("/v1/model").json()
            d = model["feature_dim"]
            x = np.random.default_rng(0).normal(size=(args.frames, d)).round(4).tolist()

            def features(i):
                r = c.post("/v1/predict/features", json={"features": x})
                assert r.status_code == 200, r.text

            def upload(i):
                r = c.post("/v1/predict", files={"file": (clip.name, data, "video/mp4")})
                assert r.status_code == 200, r.text

            print(
                f"run {run}: {len(model['classes'])} classes, members {model['members']}, D={d}, "
                f"extractor {model['extractor'].get('backbone')} {model['extractor'].get('image_size')} px; "
                f"clip {clip.name} {len(data) / 1024:.0f} KiB; concurrency {args.concurrency}; "
                f"{os.cpu_count()} CPUs"
            )
            fe = measure(features, args.requests, args.concurrency)
            up = measure(upload, args.uploads, args.concurrency)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"clip_p50_ms={up['p50_ms']:.1f}")
    print(f"clip_p95_ms={up['p95_ms']:.1f}")
    print(f"clip_requests_per_s={up['requests_per_s']:.2f}")
    print(f"features_T={args.frames}")
    print(f"features_p50_ms={fe['p50_ms']:.1f}")
    print(f"features_p95_ms={fe['p95_ms']:.1f}")
    print(f"features_requests_per_s={fe['requests_per_s']:.1f}")


if __name__ == "__main__":
    main()
