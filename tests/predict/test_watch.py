"""``vidcls watch``: live MPEG-TS written by the test at real-time pace into a pipe or over HTTP, its
windows' records as they come (order, seconds, latency, the same decisions as the recorded stream read
offline), streams that end, stall, disappear or never open, bad options, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

import vidcls
import videos as V
from vidcls.cli import main
from vidcls.errors import ConfigError
from vidcls.predict.live import check_options, watch, window_frames
from vidcls.predict.segments import Window

SRC_FPS = 10  # the written stream's rate; the run samples 5 fps: frame j is source frame 2j
LATENCY_S = 1.5


@pytest.fixture(scope="module")
def live_run(rate_clips_run) -> Path:
    """A finished 1-member run on clips of two colours extracted at 5 fps (a real, seeded random CNN)."""
    return rate_clips_run[1]


class _Sink:
    """What PyAV writes into: the pipe (or socket) and, optionally, a copy of every byte."""

    def __init__(self, send, tee: list | None) -> None:
        self.send, self.tee = send, tee

    def write(self, data) -> int:
        data = bytes(data)
        self.send(data)
        if self.tee is not None:
            self.tee.append(data)
        return len(data)


class TsWriter(threading.Thread):
    """Writes ``frames`` as MPEG-TS (x264 zerolatency, one flush per packet) at ``fps`` pace through
    ``send``; ``wrote[i]``: time.monotonic() once frame i was sent. ``hold``: after the frames, keep the
    pipe open (a stalled source) until ``release`` is set; ``cut_after``: stop after that many frames
    without ending the stream (the writer gone)."""

    def __init__(self, send, frames, *, fps=SRC_FPS, hold=False, cut_after=None, tee=None, close=None):
        super().__init__(daemon=True)
        self.sink, self.frames, self.fps = _Sink(send, tee), frames, fps
        self.hold, self.cut_after, self.close = hold, cut_after, close
        self.wrote: list[float] = []
        self.done = float("inf")
        self.release, self.stop = threading.Event(), threading.Event()
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            self._write()
        except OSError as err:  # the reader went away (a broken pipe, a reset connection)
            self.failed = err
        finally:
            self.done = time.monotonic()
            if self.hold:
                self.release.wait(30)
            if self.close:
                self.close()

    def _write(self) -> None:
        out = av.open(self.sink, "w", format="mpegts", options={"flush_packets": "1"}, buffer_size=188 * 7)
        s = out.add_stream("libx264", rate=self.fps)
        s.width, s.height, s.pix_fmt = self.frames.shape[2], self.frames.shape[1], "yuv420p"
        s.time_base = Fraction(1, self.fps)
        s.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
        t0 = time.monotonic()
        for i, rgb in enumerate(self.frames):
            if (self.cut_after is not None and i == self.cut_after) or self.stop.is_set():
                return  # no trailer, no flush: the source just goes
            time.sleep(max(0.0, t0 + i / self.fps - time.monotonic()))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, self.fps)
            out.mux(s.encode(frame))
            self.wrote.append(time.monotonic())
        out.mux(s.encode(None))
        out.close()


def _pipe_writer(frames, **kw) -> tuple[str, TsWriter]:
    """("pipe:R", a started writer into the pipe's other end, closed when it is done)."""
    r, w = os.pipe()

    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]

    writer = TsWriter(send, frames, close=lambda: os.close(w), **kw)
    writer.start()
    return f"pipe:{r}", writer


def _frames(n: int) -> np.ndarray:
    half = n // 2
    return np.concatenate(
        [V.shapes_frames(half, color=(220, 40, 40), seed=1), V.shapes_frames(n - half, color=(40, 60, 220))]
    )


# ---- a stream that plays, then ends ---------------------------------------------------------------
def test_windows_arrive_as_the_stream_plays_and_match_the_recorded_stream(
    live_run, tmp_path, one_torch_thread
):
    p = vidcls.load(live_run, device="cpu")
    tee: list[bytes] = []
    source, writer = _pipe_writer(_frames(40), tee=tee)  # 4 s: 20 frames at the run's 5 fps
    got = []
    for rec in watch(p, source, window="1s", timeout_s=5.0):  # W = 5, S = 2 frames
        got.append((time.monotonic(), writer.done, rec))
    writer.join(5)
    # windows 0, 2, ..., 14 (the last full one ends at frame 19), then the tail [15, 20)
    starts = [r["start_frame"] for _, _, r in got]
    assert starts == [0, 2, 4, 6, 8, 10, 12, 14, 15]
    assert [r["window_index"] for _, _, r in got] == list(range(9))
    assert all(r["end_frame"] == r["start_frame"] + 5 and r["error"] is None for _, _, r in got)
    assert [r["start_s"] for _, _, r in got] == pytest.approx([s * 0.2 for s in starts])
    assert [r["end_s"] for _, _, r in got] == pytest.approx([(s + 5) * 0.2 for s in starts])
    # they came while the writer was still writing: the first about 0.8 s in, not at the end
    assert sum(t < done for t, done, _ in got) >= 7
    latencies = [r["latency_s"] for _, _, r in got]
    assert all(0 <= x <= LATENCY_S for x in latencies), latencies
    # independently: a window's record vs the writing of the source frame its last frame is (2 j)
    seen = [t - writer.wrote[2 * (r["end_frame"] - 1)] for t, _, r in got[:-1]]
    assert all(0 < x <= 2 * LATENCY_S for x in seen), seen
    # the same windows of the very bytes, read offline as a file: the same decisions
    recorded = tmp_path / "recorded.ts"
    recorded.write_bytes(b"".join(tee))
    offline = p.predict_segments(str(recorded), window="1s")[0]
    assert [s["start_frame"] for s in offline["segments"]] == starts
    for (_, _, live), seg in zip(got, offline["segments"]):
        assert live["label"] == seg["label"]
        assert live["probabilities"] == pytest.approx(seg["probabilities"], abs=2e-3)
        assert live["trusted"] == seg["trusted"] and live["trust_reason"] == seg["trust_reason"]
        assert [k["class"] for k in live["top_k"]][0] == live["label"]
    print(f"latency_s max {max(latencies):.3f} median {np.median(latencies):.3f}; seen max {max(seen):.3f}")


def test_a_stream_shorter_than_one_window_gives_no_record(live_run, capsys):
    source, writer = _pipe_writer(_frames(6))  # 3 frames at 5 fps, the window is 5
    assert main(["watch", str(live_run), source, "--segments", "5", "--device", "cpu", "--timeout", "5"]) == 0
    writer.join(5)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "0 windows" in err and "fewer frames than one window" in err


# ---- streams that stall, disappear or never open --------------------------------------------------
def test_a_stalled_stream_is_one_line_and_status_4(live_run, tmp_path, capsys):
    source, writer = _pipe_writer(_frames(14), hold=True)  # 7 frames, then nothing, the pipe open
    out = tmp_path / "live.jsonl"
    t0 = time.monotonic()
    try:
        rc = main(
            ["watch", str(live_run), source, "--segments", "4", "--timeout", "1", "--device", "cpu"]
            + ["--output", str(out)]
        )
        took = time.monotonic() - (writer.done if writer.done < float("inf") else t0)
    finally:
        writer.release.set()
    assert rc == 4
    assert took < 1 + 3.0
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("vidcls watch: ") and source in err
    lines = out.read_text().splitlines()  # windows [0, 4) and perhaps [2, 6) before the stall
    assert [json.loads(x)["start_frame"] for x in lines] == [0, 2][: len(lines)] and lines
    assert f"({len(lines)} windows written)" in err


class _Live(BaseHTTPRequestHandler):
    """GET /live.ts: MPEG-TS frames at real-time pace (HTTP/1.1 chunks, ended by the last chunk as a
    server ends a stream), or, with ``cut_after``, a long stream promised and the connection dropped
    after that many frames."""

    frames: np.ndarray
    cut_after: int | None = None
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        chunked = self.cut_after is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(10**9))
        self.end_headers()

        def send(data: bytes) -> None:
            if chunked and data:
                data = b"%x\r\n" % len(data) + data + b"\r\n"
            self.wfile.write(data)

        writer = TsWriter(send, self.frames, cut_after=self.cut_after)
        writer.run()  # in this handler's thread
        if chunked and writer.failed is None:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_stream():
    """``http_stream(frames, cut_after)`` -> URL of a local server streaming them (stopped after the test)."""
    servers = []

    def start(frames, cut_after=None) -> str:
        handler = type("Handler", (_Live,), {"frames": frames, "cut_after": cut_after})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/live.ts"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_an_http_stream_that_disappears_is_one_line(live_run, http_stream, capsys):
    url = http_stream(_frames(60), cut_after=20)  # 2 s of frames, then the connection drops
    t0 = time.monotonic()
    rc = main(["watch", str(live_run), url, "--segments", "4", "--timeout", "2", "--device", "cpu"])
    assert time.monotonic() - t0 < 2 + 8.0
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith("vidcls watch: ") and url in err
    records = [json.loads(x) for x in out.splitlines()]
    assert records and [r["window_index"] for r in records] == list(range(len(records)))
    assert rc in (0, 4)  # FFmpeg may see the cut as the stream's end (0) or as an error (4)
    print(f"disappeared: status {rc}: {err.strip()}")


def test_an_http_stream_plays_to_its_end(live_run, http_stream, capsys):
    url = http_stream(_frames(20))  # 10 frames at 5 fps: windows [0, 4) [2, 6) [4, 8) [6, 10)
    rc = main(["watch", str(live_run), url, "--segments", "4", "--timeout", "5", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0 and "the stream ended" in err and len(err.splitlines()) == 1, err
    records = [json.loads(x) for x in out.splitlines()]
    assert [r["start_frame"] for r in records] == [0, 2, 4, 6]  # 6 + 4 = 10: no tail


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unplayable_url_is_one_line_and_status_4(live_run, capsys):
    url = f"http://127.0.0.1:{_free_port()}/x.ts"
    assert main(["watch", str(live_run), url, "--device", "cpu", "--timeout", "3"]) == 4
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and url in err and "Traceback" not in err


# ---- options, before anything is opened ------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (["--segments", "0"], "--segments must be a positive length"),
        (["--segments", "4", "--stride", "5"], "longer than the window"),
        (["--segments", "2s", "--stride", "3s"], "longer than the window"),
        (["--timeout", "0"], "--timeout must be a positive number"),
        (["--timeout", "nan"], "--timeout must be a positive number"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--format", "nonsense"], "--format nonsense: this FFmpeg has no such input format"),
        (["--format", "ipod"], "no such input format"),  # an output-only format
    ],
)
def test_bad_options_are_one_line_before_the_run_or_source(args, says, tmp_path, capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.ts"
    listener.settimeout(0.2)
    try:
        assert main(["watch", str(tmp_path / "no-run"), url, *args]) == 2
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody connected: the source was never opened
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_output_must_be_watch_lines(live_run, tmp_path, capsys):
    other = tmp_path / "notes.jsonl"
    other.write_text('{"input": "a.mp4", "label": "x"}\n')
    url = f"http://127.0.0.1:{_free_port()}/x.ts"
    assert main(["watch", str(live_run), url, "--output", str(other)]) == 2
    assert main(["watch", str(live_run), url, "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "holds other data than vidcls watch records" in err[0] and ".jsonl" in err[1]
    assert other.read_text() == '{"input": "a.mp4", "label": "x"}\n'


def test_a_run_without_a_rate_is_refused():
    run = SimpleNamespace(fps_=None, run_dir="runs/x", window_=(16.0, "frames"))
    with pytest.raises(ConfigError, match="runs/x: the run's features took a fixed number of frames"):
        window_frames(run, Window(None, None, "", "run"), "src")
    run.fps_ = 2.0
    assert window_frames(run, Window(None, None, "", "run"), "src") == (16, 8)
    assert window_frames(run, Window(3.0, 1.0, "s", "option"), "src") == (6, 2)
    run.window_ = (2.5, "s")  # 5 frames, stride 2
    assert window_frames(run, Window(None, None, "", "run"), "src") == (5, 2)
    # --stride alone steps the run's window, in its unit: checked against it once the run is known
    assert check_options(None, "2") == Window(None, 2.0, "", "run")
    assert window_frames(run, check_options(None, "2"), "src") == (5, 4)  # 2 s
    assert window_frames(run, check_options(None, "2 frames"), "src") == (5, 2)
    with pytest.raises(ConfigError, match="longer than the run's window"):
        window_frames(run, check_options(None, "6"), "src")


# ---- Ctrl-C ----------------------------------------------------------------------------------------
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # not the ignored SIGINT of a background shell job


def test_ctrl_c_ends_cleanly_with_whole_lines(live_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidcls", "watch", str(live_run), "-", "--segments", "4", "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    fd = proc.stdin.fileno()

    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    writer = TsWriter(send, _frames(300))  # 30 s: never reaches its end here
    writer.start()
    lines: list[tuple[float, bytes]] = []
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
            if len(lines) == 3:
                proc.send_signal(signal.SIGINT)
                break
        proc.wait(timeout=20)
        writer.stop.set()
        writer.join(5)
        rest, err = proc.communicate(timeout=5)
    finally:
        writer.stop.set()
        proc.kill()
    all_lines = [x for _, x in lines] + rest.splitlines(keepends=True)
    records = [json.loads(x) for x in all_lines]  # every line is whole JSON
    assert all(x.endswith(b"\n") for x in all_lines)
    assert [r["window_index"] for r in records] == list(range(len(records)))
    assert [r["start_frame"] for r in records[:3]] == [0, 2, 4]
    assert all(r["latency_s"] <= LATENCY_S for r in records), [r["latency_s"] for r in records]
    assert proc.returncode == 0
    text = err.decode()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and "stopped by Ctrl-C" in text
