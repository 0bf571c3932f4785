"""``POST /v1/stream`` on a real uvicorn: an MPEG-TS upload sent chunk by chunk at real-time pace gets
its windows' records back while it is still being sent, in order, the same as ``watch`` on the same
bytes; uploads that stall, are no video or pass the size limit end with one error line; bad requests
get the usual error answer before anything streams."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest

import vidcls
from conftest import two_colours
from vidcls.predict.live import watch
from vidcls.serve import ServeSettings, create_app

LATENCY_S = 1.5  # issue 19: each record within 1.5 s of its window's last frame, on 2 cores


@pytest.fixture(scope="module")
def rate_predictor(rate_run):
    return vidcls.load(rate_run, device="cpu")


def ts_frames(frames: np.ndarray, fps: int = 10) -> list[bytes]:
    """MPEG-TS of ``frames`` (x264 zerolatency, one flush per packet): the bytes written for each frame
    (the last piece also holds the encoder's flush and the trailer)."""
    pieces: list[bytes] = []
    out_bytes = bytearray()

    class Sink:
        def write(self, data) -> int:
            out_bytes.extend(bytes(data))
            return len(data)

    out = av.open(Sink(), "w", format="mpegts", options={"flush_packets": "1"}, buffer_size=188 * 7)
    s = out.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.time_base = Fraction(1, fps)
    s.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        out.mux(s.encode(frame))
        pieces.append(bytes(out_bytes))
        out_bytes.clear()
    out.mux(s.encode(None))
    out.close()
    pieces[-1] += bytes(out_bytes)
    return [p for p in pieces if p]


class Upload:
    """A chunked POST on a raw socket: ``pieces`` sent every ``pace_s`` by a thread while the answer is
    read here, line by line, with the time each line came. ``hold``: after the pieces, send nothing more
    and keep the connection open (a stalled upload) until it is set."""

    def __init__(self, url: str, target: str, pieces, *, pace_s=0.1, hold: threading.Event | None = None):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: video/mp2t\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        self.pieces, self.pace_s, self.hold = list(pieces), pace_s, hold
        self.sent_at: list[float] = []
        self.done = float("inf")
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        try:
            for piece in self.pieces:
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.sent_at.append(time.monotonic())
                time.sleep(self.pace_s)
            if self.hold is not None:
                self.hold.wait(60)
            else:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection
            pass
        finally:
            self.done = time.monotonic()

    def answer(self) -> tuple[int, str, list[tuple[float, dict]]]:
        """(status, content type, [(arrival time, JSON line)]) once the answer has ended."""
        resp = http.client.HTTPResponse(self.sock, method="POST")
        resp.begin()
        lines = []
        while line := resp.readline():
            assert line.endswith(b"\n"), line  # whole lines only
            lines.append((time.monotonic(), json.loads(line)))
        if self.hold is not None:
            self.hold.set()
        self.thread.join(30)
        self.sock.close()
        return resp.status, resp.getheader("content-type", ""), lines


def _watch_bytes(predictor, pieces, **kw) -> list[dict]:
    """``watch`` on the same bytes written into a pipe."""
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            for piece in pieces:
                f.write(piece)

    threading.Thread(target=write, daemon=True).start()
    return list(watch(predictor, f"pipe:{r}", **kw))


def test_windows_come_back_while_the_upload_arrives(rate_predictor, serve_app, tmp_path, one_torch_thread):
    pieces = ts_frames(two_colours(40))  # 4 s at 10 fps: 20 frames at the run's 5 fps
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), body_timeout_s=5))
    with serve_app(app) as url:
        up = Upload(url, "/v1/stream?segments=1s&top_k=1", pieces)  # a frame's bytes every 0.1 s
        status, ctype, got = up.answer()
    assert status == 200 and ctype == "application/x-ndjson"
    records = [r for _, r in got]
    starts = [r["start_frame"] for r in records]  # 5-frame windows every 2, the tail [15, 20)
    assert starts == [0, 2, 4, 6, 8, 10, 12, 14, 15]
    assert [r["window_index"] for r in records] == list(range(9))
    assert [r["end_frame"] for r in records] == [s + 5 for s in starts]
    assert [r["start_s"] for r in records] == pytest.approx([s * 0.2 for s in starts])
    assert all(r["error"] is None and r["source"] == "upload" and len(r["top_k"]) == 1 for r in records)
    # they came while the upload was still being sent, not at its end
    assert sum(t < up.done for t, _ in got) >= 5, [(round(up.done - t, 2)) for t, _ in got]
    # a window's record vs the moment the bytes of its last frame (source frame 2 (end - 1)) were sent
    seen = [t - up.sent_at[2 * (r["end_frame"] - 1)] for t, r in got[:-1]]
    assert all(0 < x <= 2 * LATENCY_S for x in seen), seen
    assert all(0 <= r["latency_s"] <= LATENCY_S for r in records), [r["latency_s"] for r in records]
    # watch on the very bytes: the same windows and decisions
    offline = _watch_bytes(rate_predictor, pieces, window="1s", timeout_s=5.0, top_k=1)
    assert len(offline) == len(records)
    for live, ref in zip(records, offline):
        for key in ("window_index", "start_frame", "end_frame", "start_s", "end_s", "label", "trusted"):
            assert live[key] == ref[key], key
        assert live["probabilities"] == pytest.approx(ref["probabilities"], abs=2e-3)
    assert list(tmp_path.iterdir()) == []
    print(f"stream: seen max {max(seen):.3f} s, latency max {max(r['latency_s'] for r in records):.3f} s")


def test_a_stalled_upload_ends_with_one_error_line(rate_predictor, serve_app, tmp_path):
    pieces = ts_frames(two_colours(40))[:16]  # 8 frames at 5 fps, then nothing, the connection open
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), body_timeout_s=1))
    with serve_app(app) as url:
        up = Upload(url, "/v1/stream?segments=4", pieces, pace_s=0.02, hold=threading.Event())
        status, _, got = up.answer()
        stalled = got[-1][0] - up.sent_at[-1]
    assert status == 200
    *windows, last = [r for _, r in got]
    assert last == {
        "error": "no part of the request body arrived for 1 s (--body-timeout); the request was given up: "
        "send the body without pauses"
    }
    assert [r["start_frame"] for r in windows] == [0, 2, 4][: len(windows)] and windows
    assert 1.0 <= stalled < 1.0 + 4.0, stalled


def test_bytes_that_are_no_video_are_one_error_line(rate_predictor, serve_app, tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), body_timeout_s=2))
    with serve_app(app) as url:
        up = Upload(
            url, "/v1/stream", [garbage[i : i + 8192] for i in range(0, len(garbage), 8192)], pace_s=0
        )
        status, _, got = up.answer()
    assert status == 200 and len(got) == 1
    ((_, line),) = got
    assert list(line) == ["error"] and "upload" in line["error"] and "\n" not in line["error"]
    print(f"garbage: {line['error']}")


def test_a_body_over_the_limit_ends_with_one_error_line(rate_predictor, serve_app, tmp_path):
    pieces = ts_frames(two_colours(40))
    limit_mb = sum(map(len, pieces[:20])) / 2**20  # about half the stream
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), max_upload_mb=limit_mb))
    with serve_app(app) as url:
        status, _, got = Upload(url, "/v1/stream?segments=4", pieces, pace_s=0.02).answer()
        assert status == 200
        assert "the request body is larger than the limit" in got[-1][1]["error"]
        assert all("window_index" in r for _, r in got[:-1])
        # a declared length over the limit: refused before anything streams
        r = httpx.post(url + "/v1/stream", content=b"".join(pieces), headers={"content-type": "video/mp2t"})
        assert r.status_code == 413 and "larger than the limit" in r.json()["error"]


def test_a_stream_holds_an_upload_place(rate_predictor, serve_app, tmp_path):
    pieces = ts_frames(two_colours(20))
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), max_uploads=1, body_timeout_s=3))
    with serve_app(app) as url:
        hold = threading.Event()
        first = Upload(url, "/v1/stream?segments=4", pieces[:4], pace_s=0, hold=hold)
        time.sleep(1.0)
        r = httpx.post(url + "/v1/stream", content=b"".join(pieces), headers={"content-type": "video/mp2t"})
        assert r.status_code == 503 and "--max-uploads" in r.json()["error"]
        hold.set()
        first.answer()
        # the place is let go with the stream
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post(
                "/v1/stream?segments=4", content=b"".join(pieces), headers={"content-type": "video/mp2t"}
            )
        assert r.status_code == 200
        assert [json.loads(x)["start_frame"] for x in r.text.splitlines()] == [0, 2, 4, 6]


@pytest.mark.parametrize(
    "query, headers, status, says",
    [
        ("segments=0", {}, 422, "segments must be a positive length"),
        ("segments=4&stride=5", {}, 422, "stride 5 is longer than the window segments 4"),
        ("stride=30", {}, 422, "stride is longer than the run's window"),
        ("format=nonsense", {}, 422, "format nonsense: this FFmpeg has no such input format"),
        ("top_k=0", {}, 422, "top_k"),
        ("", {"content-type": "multipart/form-data; boundary=x"}, 415, "send the video itself"),
    ],
)
def test_bad_requests_are_answered_before_streaming(rate_predictor, serve_app, query, headers, status, says):
    with serve_app(create_app(rate_predictor)) as url:
        r = httpx.post(f"{url}/v1/stream?{query}", content=b"\x47" * 188, headers=headers)
    assert r.status_code == status and says in r.json()["error"], r.text
    assert "--" not in r.json()["error"]


def test_streams_the_server_cannot_have(rate_predictor, video_run, fake, serve_app):
    with serve_app(create_app(rate_predictor)) as url:
        r = httpx.post(url + "/v1/stream", content=b"", headers={"content-type": "video/mp2t"})
        assert r.status_code == 422 and "the request body is empty" in r.json()["error"]
    with serve_app(create_app(vidcls.load(video_run, device="cpu"))) as url:  # N frames per video: no rate
        r = httpx.post(url + "/v1/stream", content=b"\x47" * 188)
        assert r.status_code == 422 and "took a fixed number of frames per video" in r.json()["error"]
    with serve_app(create_app(fake())) as url:
        r = httpx.post(url + "/v1/stream", content=b"\x47" * 188)
        assert r.status_code == 501
    with serve_app(create_app(rate_predictor, ServeSettings(api_key="k3y"))) as url:
        assert httpx.post(url + "/v1/stream", content=b"\x47" * 188).status_code == 401


def _decoders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vidcls-decode") and t.is_alive()]


def test_a_client_that_leaves_frees_its_places_and_decoder(rate_predictor, serve_app, tmp_path):
    pieces = ts_frames(two_colours(40))
    before = len(_decoders())
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), max_uploads=1, body_timeout_s=20))
    with serve_app(app) as url:
        up = Upload(url, "/v1/stream?segments=4", pieces[:12], pace_s=0.02, hold=threading.Event())
        time.sleep(1.0)
        up.sock.shutdown(socket.SHUT_RDWR)  # gone mid-upload, long before the body timeout
        up.sock.close()
        up.hold.set()
        deadline, status = time.monotonic() + 10, None
        while time.monotonic() < deadline:  # the upload place comes free with the stream's end
            r = httpx.post(url + "/v1/stream?segments=4", content=b"".join(pieces[:20]), timeout=60)
            status = r.status_code
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200 and [json.loads(x)["start_frame"] for x in r.text.splitlines()] == [0, 2, 4, 6]
        deadline = time.monotonic() + 10
        while len(_decoders()) > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_decoders()) == before


def test_the_body_reader_reads_in_order_and_ends():
    from vidcls.serve.stream import BodyReader, UploadBroken

    woken = []
    reader = BodyReader(0.3, max_buffer=10)
    reader.on_room = lambda: woken.append(1)
    reader.feed(b"abcdef")
    assert reader.room()
    reader.feed(b"ghijkl")
    assert not reader.room()  # 12 bytes held, more than 10
    assert reader.read(4) == b"abcd" and reader.read(4) == b"efgh" and woken == [1, 1]
    assert reader.room()
    assert reader.read(-1) == b"ijkl"
    t0 = time.monotonic()
    with pytest.raises(UploadBroken, match="no part of the upload arrived for 0.3 s"):
        reader.read(4)  # nothing for its timeout
    assert 0.3 <= time.monotonic() - t0 < 1.5
    later = threading.Timer(0.1, reader.feed, [b"xy"])
    later.start()
    assert reader.read(8) == b"xy"  # a read waits for bytes
    reader.feed(b"z")
    reader.end("the body broke off")
    assert reader.read(8) == b"z"  # what came before the break is read first
    with pytest.raises(UploadBroken, match="the body broke off"):
        reader.read(8)
    ended = BodyReader(5.0)
    ended.feed(b"12")
    ended.end()
    assert ended.read(8) == b"12" and ended.read(8) == b"" and ended.read(8) == b""
    closed = BodyReader(5.0)
    closed.feed(b"12")
    closed.close()
    closed.feed(b"34")
    assert closed.read(8) == b"" and closed.dropped == 2 and closed.received == 4


def test_the_stream_is_in_the_api_documents(fake, serve_app):
    with serve_app(create_app(fake())) as url:
        op = httpx.get(url + "/openapi.json").json()["paths"]["/v1/stream"]["post"]
    assert "application/x-ndjson" in op["responses"]["200"]["content"]
    assert "video/*" in op["requestBody"]["content"]
    assert {p["name"] for p in op["parameters"]} == {"segments", "stride", "top_k", "format"}


def _container_bytes(frames: np.ndarray, fmt: str, fps: int = 10) -> bytes:
    """``frames`` in a streamable container: Matroska (VP8) or fragmented MP4 (H.264)."""
    buf = bytearray()

    class Sink:
        def write(self, data) -> int:
            buf.extend(bytes(data))
            return len(data)

    options = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if fmt == "mp4" else {}
    out = av.open(Sink(), "w", format=fmt, options=options)
    s = out.add_stream("libvpx" if fmt == "matroska" else "libx264", rate=fps)
    s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    s.time_base = Fraction(1, fps)
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        out.mux(s.encode(frame))
    out.mux(s.encode(None))
    out.close()
    return bytes(buf)


@pytest.mark.parametrize("fmt", ["matroska", "mp4"])
def test_matroska_and_fragmented_mp4_uploads_stream_too(rate_predictor, serve_app, tmp_path, fmt):
    data = _container_bytes(two_colours(20), fmt)  # 10 frames at 5 fps: windows [0, 4) [2, 6) [4, 8) [6, 10)
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    with serve_app(create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), body_timeout_s=5))) as url:
        status, _, got = Upload(url, "/v1/stream?segments=4", pieces, pace_s=0.01).answer()
    assert status == 200
    assert [r.get("start_frame", r.get("error")) for _, r in got] == [0, 2, 4, 6]
