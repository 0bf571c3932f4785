"""``/v1/predict`` with ``segments=`` / ``stride=`` (query or form fields): the record of
``predict_segments`` for the uploaded video, every bad window refused with one line before the body
is stored."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

import vidcls
import videos as V
from conftest import two_colours
from vidcls.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def rate_predictor(rate_run):
    return vidcls.load(rate_run, device="cpu")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """4 s at 10 fps (20 frames at the run's 5 fps): red, then blue."""
    return V.write_clip(tmp_path_factory.mktemp("long") / "two colours.mp4", two_colours(40), fps=10)


def _post(c: httpx.Client, path, params=None, data=None, name="two colours.mp4") -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/v1/predict", params=params, data=data, files={"file": (name, f, "video/mp4")})


def _same_windows(got: dict, want: dict) -> None:
    for key in ("window", "segments", "spans", "label", "probabilities", "frames"):
        assert got[key] == want[key], key


def test_segments_give_the_windows_of_predict_segments(
    rate_predictor, rate_run, long_clip, serve_app, tmp_path
):
    app = create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path), run_dir=str(rate_run)))
    want = rate_predictor.predict_segments(str(long_clip), "1s")[0]
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        r = _post(c, long_clip, {"segments": "1s", "thumbnails": 1})
        rec = r.json()
        assert r.status_code == 200 and rec["input"] == "two colours.mp4" and rec["error"] is None
        # 5-frame windows every 2 frames over 20 frames, the last one ending at the video's end
        assert rec["window"] == {
            "frames": 5,
            "stride_frames": 2,
            "seconds": 1.0,
            "stride_s": 0.4,
            "source": "option",
        }
        assert [s["start_frame"] for s in rec["segments"]] == [0, 2, 4, 6, 8, 10, 12, 14, 15]
        assert [s["end_s"] for s in rec["segments"]] == pytest.approx(
            [(s + 5) * 0.2 for s in (0, 2, 4, 6, 8, 10, 12, 14, 15)]
        )
        # single-label spans partition the video: they follow one another from frame 0 to 20
        edges = [(s["start_frame"], s["end_frame"]) for s in rec["spans"]]
        assert edges[0][0] == 0 and edges[-1][1] == 20
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:]))
        assert len(rec["thumbnails"]) == len(rec["frames"])
        _same_windows(rec, want)
        # the same as form fields; the stride in frames
        by_form = _post(c, long_clip, data={"segments": "5", "stride": "3"}).json()
        assert by_form["window"]["frames"] == 5 and by_form["window"]["stride_frames"] == 3
        assert [s["start_frame"] for s in by_form["segments"]] == [0, 3, 6, 9, 12, 15]
        _same_windows(by_form, rate_predictor.predict_segments(str(long_clip), 5, 3)[0])
        # "run" (or empty): the run's typical window; no segments: the plain record
        assert _post(c, long_clip, {"segments": "run"}).json()["window"]["source"] == "run"
        plain = _post(c, long_clip).json()
        assert "segments" not in plain and "spans" not in plain
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "params, says",
    [
        ({"segments": "0"}, "segments must be a positive length"),
        ({"segments": "abc"}, "segments must be seconds like 10s or frames like 10, got 'abc'"),
        ({"segments": "4", "stride": "5"}, "stride 5 is longer than the window segments 4"),
        ({"segments": "2s", "stride": "3"}, "longer than the window"),
        ({"segments": "2s", "stride": "1 frames"}, "stride 1 frames is in frames but segments 2s in s"),
        ({"segments": "2.5"}, "segments in frames must be a whole number, got 2.5"),
        ({"stride": "2"}, "stride needs segments"),
    ],
)
def _answer_without_body(url: str, target: str) -> tuple[int, dict]:
    """POST ``target`` announcing a 1 MB body and ``Expect: 100-continue``, sending none of it: the
    status and JSON of the answer, which comes only if the server decided without asking for the body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            (
                f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body[: _length(reply)])


def _length(reply: bytes) -> int:
    head = reply.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next(int(x.split(":")[1]) for x in head.split("\r\n") if x.startswith("content-length:"))


@pytest.mark.parametrize(
    "query, says",
    [
        ("segments=0", "segments must be a positive length"),
        ("segments=abc", "segments must be seconds like 10s or frames like 10, got 'abc'"),
        ("segments=4&stride=5", "stride 5 is longer than the window segments 4"),
        ("segments=2s&stride=3", "longer than the window"),
        ("segments=2s&stride=1%20frames", "stride 1 frames is in frames but segments 2s in s"),
        ("segments=2.5", "segments in frames must be a whole number, got 2.5"),
        ("stride=2", "stride needs segments"),
    ],
)
def test_a_bad_window_is_one_line_before_the_upload(rate_predictor, query, says, serve_app, tmp_path):
    with serve_app(create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path)))) as url:
        status, body = _answer_without_body(url, "/v1/predict?" + query)
    assert status == 422
    message = body["error"]
    assert says in message and "--" not in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_windows_the_video_or_run_cannot_have(rate_predictor, video_run, long_clip, serve_app, tmp_path):
    with (
        serve_app(create_app(rate_predictor, ServeSettings(tmp_dir=str(tmp_path)))) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        r = _post(c, long_clip, {"segments": "30s"})  # 150 frames, the video has 20
        assert r.status_code == 422
        rec = r.json()
        assert "the window (150 frames, 30 s) is longer than the video (20 frames)" in rec["error"]
        assert "two colours.mp4" in rec["error"] and str(tmp_path) not in rec["error"]
        assert rec["segments"] == [] and rec["spans"] == []
        r = _post(c, long_clip, {"segments": "2s"}, data={"segments": "3s"})
        assert r.status_code == 422 and r.json()["error"] == (
            "segments is given twice, '2s' in the query and '3s' in the form; give it once"
        )
    # a run whose features took N frames per video has no rate: its videos cannot be cut into windows
    fixed = vidcls.load(video_run, device="cpu")
    with (
        serve_app(create_app(fixed, ServeSettings(tmp_dir=str(tmp_path)))) as url,
        httpx.Client(base_url=url, timeout=120) as c,
    ):
        for window in ("1s", "2"):
            r = _post(c, long_clip, {"segments": window})
            assert r.status_code == 422
            assert "took a fixed number of frames per video" in r.json()["error"]
        assert _post(c, long_clip).status_code == 200
    assert list(tmp_path.iterdir()) == []


def test_a_predictor_without_windows_refuses_segments(fake, serve_app, clip):
    with serve_app(create_app(fake())) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = _post(c, clip, {"segments": "4"})
        assert r.status_code == 501 and "does not classify windows" in r.json()["error"]
        assert _post(c, clip).status_code == 200


def test_window_form_fields_are_one_short_line_each(fake, serve_app, clip, tmp_path):
    with serve_app(create_app(fake(), ServeSettings(tmp_dir=str(tmp_path)))) as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = _post(c, clip, data={"segments": "1" * 257})
            assert r.status_code == 422
            assert r.json()["error"] == "the form field 'segments' is longer than 256 bytes"
            r = _post(c, clip, data={"stride": ["1", "2"]})
            assert r.status_code == 422
            assert r.json()["error"] == "the form has the field 'stride' twice; send it once"
            assert _post(c, clip, data={"note": "1" * 1000}).status_code == 200  # other fields: ignored
    assert list(tmp_path.iterdir()) == []
