"""``features.stream``: the frames extraction would take, at a rate over a whole video or a live
source, encoded as they are decoded, with the decoder held to a bounded queue."""

from __future__ import annotations

import io
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

import videos as V
from vidcls.features import stream as S
from vidcls.features.backbone import FrameEncoder
from vidcls.features.pipeline import encode_video
from vidcls.features.quality import Quality
from vidcls.features.sampling import Sampling
from vidcls.features.video import read_frames


@pytest.fixture(scope="module")
def encoder(one_torch_thread) -> FrameEncoder:
    return FrameEncoder("resnet18", "none", image_size=64, device="cpu", batch_size=4)


def _times(fps: float, frame_times: list[float], frame_s: float = 0.1) -> list[float]:
    take = S._OnScreen(fps)
    used = [t for ft in frame_times for t, _ in take.push(ft, None)]
    return used + [t for t, _ in take.finish(frame_s)]


# ---- which frames: the frame on screen at k / fps ------------------------------------------------
def test_the_frame_on_screen_at_each_time_once():
    # 10 fps frames, 4 fps times 0, .25, .5, .75: on screen then are the frames at 0, .2, .5, .7
    assert _times(4, [i / 10 for i in range(10)]) == pytest.approx([0.0, 0.2, 0.5, 0.7])
    # 25 fps taken at 30 fps: a frame serves two times once (0.0 at 0 and 1/30), so fewer than 30
    got = _times(30, [i / 25 for i in range(25)], frame_s=0.04)
    assert got == pytest.approx([i / 25 for i in range(25)])
    # a first frame after 0 is the first on screen; the last serves the times within its display
    assert _times(2, [0.3, 0.6, 1.1], frame_s=0.5) == pytest.approx([0.3, 0.6, 1.1])  # 0, .5, 1, 1.5
    assert _times(2, [0.0, 0.9], frame_s=0.4) == pytest.approx(
        [0.0, 0.9]
    )  # 0.5: 0.0 again (once); 1.0 < 1.3: the last


def test_an_exact_time_is_used_without_waiting_for_the_next_frame():
    take = S._OnScreen(5)
    assert [t for t, _ in take.push(0.0, "a")] == [0.0]
    assert take.push(0.1, "b") == []
    assert take.push(0.2, "c") == [(0.2, "c")]  # on screen at 0.2 for sure: no latency of one frame
    assert take.push(0.35, "d") == []  # 0.4 is still ahead
    assert take.push(0.45, "e") == [(0.35, "d")]


@pytest.mark.parametrize("fps", [2.0, 3.0, 10.0])
def test_the_same_times_as_extraction(tmp_path, fps):
    video = V.write_clip(tmp_path / "v.mp4", V.shapes_frames(37))  # 3.7 s at 10 fps
    times = read_frames(video, Sampling(fps=fps, max_frames=1000)).timestamps_ms
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        frame_times = [float((f.pts - (s.start_time or 0)) * s.time_base) for f in c.decode(s)]
    assert np.asarray(_times(fps, frame_times)) * 1000 == pytest.approx(times)


# ---- features ---------------------------------------------------------------------------------------
def test_features_equal_extraction(tmp_path, encoder):
    video = V.write_clip(tmp_path / "v.mp4", V.shapes_frames(43))
    chunks = list(S.stream_features(video, encoder, fps=5.0, quality=Quality()))
    assert [len(c.features) for c in chunks] == [4, 4, 4, 4, 4, 2]  # batches of the encoder's size
    ref = encode_video(video, encoder, Sampling(fps=5.0, max_frames=1000), Quality())
    np.testing.assert_array_equal(np.concatenate([c.timestamps_ms for c in chunks]), ref.timestamps_ms)
    np.testing.assert_allclose(np.concatenate([c.features for c in chunks]), ref.features, atol=1e-5)
    arrived = np.concatenate([c.arrived for c in chunks])
    assert np.all(np.diff(arrived) >= 0) and arrived[-1] <= time.monotonic()


def test_dark_frames_are_dropped_one_by_one(tmp_path, encoder):
    frames = V.shapes_frames(30)
    frames[10:20] = 3  # a black second in the middle
    video = V.write_clip(tmp_path / "v.mp4", frames)
    stamps = np.concatenate(
        [c.timestamps_ms for c in S.stream_features(video, encoder, fps=5.0, quality=Quality())]
    )
    np.testing.assert_allclose(stamps, [0, 200, 400, 600, 800, 2000, 2200, 2400, 2600, 2800])


def test_the_decoder_stays_a_bounded_queue_ahead(tmp_path, encoder, monkeypatch):
    video = V.write_clip(tmp_path / "long.mp4", V.shapes_frames(400))  # 40 s: 200 frames at 5 fps
    monkeypatch.setattr(S, "QUEUE_FRAMES", 8)
    taken = []
    real = S.to_rgb
    monkeypatch.setattr(S, "to_rgb", lambda frame: taken.append(1) or real(frame))
    chunks = S.stream_features(video, encoder, fps=5.0, quality=Quality())
    first = next(chunks)
    time.sleep(1.0)  # a slow reader: the decoder must wait, not decode the rest into memory
    held = len(taken) - len(first.features)
    assert held <= 8 + encoder.batch_size + 1, held
    assert sum(len(c.features) for c in chunks) + len(first.features) == 200


def test_unusable_files_are_one_line(tmp_path, encoder):
    bad = V.corrupt(tmp_path / "bad.mp4")
    with pytest.raises(S.StreamError, match=r"bad\.mp4: FFmpeg cannot open it"):
        list(S.stream_features(bad, encoder, fps=1.0, quality=Quality()))
    audio = V.write_audio_only(tmp_path / "a.mp4")
    with pytest.raises(S.StreamError, match="no video stream"):
        list(S.stream_features(audio, encoder, fps=1.0, quality=Quality()))
    with pytest.raises(S.ExtractError, match="fps must be a positive number"):
        next(S.stream_features(bad, encoder, fps=0.0, quality=Quality()))


# ---- live sources -------------------------------------------------------------------------------------
def _ts_bytes(frames: np.ndarray, fps: int = 10, fmt: str = "mpegts", options: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options or {}) as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.time_base = Fraction(1, fps)
        s.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return buf.getvalue()


def test_a_file_like_source_gives_what_its_file_gives(tmp_path, encoder):
    data = _ts_bytes(V.shapes_frames(30))
    (tmp_path / "v.ts").write_bytes(data)
    live = list(S.stream_features(io.BytesIO(data), encoder, fps=5.0, quality=Quality(), live=True))
    offline = list(S.stream_features(tmp_path / "v.ts", encoder, fps=5.0, quality=Quality()))
    got, want = (np.concatenate([c.timestamps_ms for c in x]) for x in (live, offline))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, np.arange(15) * 200.0)  # from the first frame on
    np.testing.assert_allclose(
        np.concatenate([c.features for c in live]), np.concatenate([c.features for c in offline]), atol=1e-5
    )


class _Pipe:
    """A binary stream that can only be read, as a pipe: no seek, no size."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, 4096) if n > 0 else n)


@pytest.mark.parametrize(
    "fmt, options",
    [("mpegts", None), ("matroska", None), ("mp4", {"movflags": "frag_keyframe+empty_moov"})],
)
def test_streamable_containers_from_a_pipe(encoder, fmt, options):
    data = _ts_bytes(V.shapes_frames(20), fmt=fmt, options=options)
    chunks = list(S.stream_features(_Pipe(data), encoder, fps=5.0, quality=Quality(), live=True))
    np.testing.assert_allclose(np.concatenate([c.timestamps_ms for c in chunks]), np.arange(10) * 200.0)


def test_a_growing_file_is_read_as_it_grows_then_stalls(tmp_path, encoder):
    data = _ts_bytes(V.shapes_frames(60))  # 6 s at 10 fps: 30 frames at 5 fps
    path = tmp_path / "rec.ts"
    path.write_bytes(b"")
    parts = np.array_split(np.frombuffer(data, np.uint8), 6)
    done = threading.Event()

    def grow() -> None:
        for part in parts:
            with open(path, "ab") as fh:
                fh.write(part.tobytes())
            time.sleep(0.4)
        done.set()

    threading.Thread(target=grow, daemon=True).start()
    seen, before_done = 0, 0
    with pytest.raises(S.StreamError, match=r"rec\.ts") as err:
        for chunk in S.stream_features(path, encoder, fps=5.0, quality=Quality(), live=True, timeout_s=1.5):
            seen += len(chunk.features)
            before_done += 0 if done.is_set() else len(chunk.features)
    assert seen >= 28, err.value  # the last frames may wait for bytes that never come
    assert before_done >= 10  # frames came while the file was still being written


def test_a_live_source_that_never_opens_is_one_line(encoder):
    with pytest.raises(S.StreamError, match=r"http://127\.0\.0\.1:9/x\.ts: cannot open the stream"):
        next(S.stream_features("http://127.0.0.1:9/x.ts", encoder, fps=1.0, quality=Quality(), live=True))
