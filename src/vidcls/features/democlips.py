"""Labelled demo clips made with PyAV: four kinds of video a viewer tells apart at a glance.

``write_demo_clips(root, per_class)`` writes ``root/<class>/<class>_NNN.mp4`` (the class layout of
``vidcls extract``), each clip varied by its own seed (colours, sizes, speeds, 3-6 s long):

    slides     flat slides: a uniform background, a title block and text-like bars; the slide
               changes every ~2 s and is still in between
    animation  drawn animation: flat saturated background, outlined cartoon shapes moving and
               bouncing
    camera     camera-like footage: a blurred natural-coloured landscape texture panning slowly,
               with sensor noise and a flickering exposure
    game       game-like scene: a tile grid world scrolling under a moving sprite, with HUD bars

Everything is numpy on small frames (160x120 at 10 fps by default): the demo's 120 clips take a few
seconds. The same (class, index, seed) always gives the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

CLASSES = ("animation", "camera", "game", "slides")  # sorted: the class order of the store
WIDTH, HEIGHT, FPS = 160, 120, 10


# ---- drawing helpers ----------------------------------------------------------------------------
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _box_blur(img: np.ndarray, radius: int, times: int = 2) -> np.ndarray:
    """Separable box blur along the first two axes (wrapping), ``times`` passes."""
    out = img.astype(np.float32)
    k = 2 * radius + 1
    for _ in range(times):
        for axis in (0, 1):
            c = np.cumsum(
                np.concatenate(
                    [out.take(range(-radius - 1, 0), axis=axis), out, out.take(range(radius), axis=axis)],
                    axis=axis,
                ),
                axis=axis,
            )
            n = out.shape[axis]
            out = (c.take(range(k, k + n), axis=axis) - c.take(range(n), axis=axis)) / k
    return out


def _vivid(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour: one channel high, one low, one anywhere."""
    c = np.array([rng.uniform(190, 255), rng.uniform(0, 70), rng.uniform(0, 255)])
    return c[rng.permutation(3)]


def _pastel(rng: np.random.Generator) -> np.ndarray:
    """A light, clearly tinted colour (cartoon skies and walls)."""
    c = np.array([rng.uniform(210, 255), rng.uniform(110, 170), rng.uniform(140, 240)])
    return c[rng.permutation(3)]


def _dark(rng: np.random.Generator, high: float = 110) -> np.ndarray:
    """A dark colour (retro game worlds)."""
    return rng.uniform(30, high, 3)


# ---- the four classes ---------------------------------------------------------------------------
def slides_frames(
    n: int, rng: np.random.Generator, w: int = WIDTH, h: int = HEIGHT, fps: int = FPS
) -> np.ndarray:
    """Flat slides: pale background, dark title block, rows of word-like bars; a new slide every
    ~2 s, still in between."""
    per_slide = max(1, round(rng.uniform(1.6, 2.4) * fps))
    bg = rng.uniform(232, 250) + rng.uniform(-5, 5, 3)  # white, lightly tinted
    ink = rng.uniform(10, 70, 3)
    accent = _vivid(rng) * 0.6
    slides = []
    for _ in range(n // per_slide + 1):
        f = np.empty((h, w, 3), np.float32)
        f[:] = bg
        title_h = int(rng.integers(12, 20))
        f[:title_h] = accent  # title band
        tx = int(rng.integers(6, 20))
        f[4 : title_h - 4, tx : tx + int(rng.integers(50, w - 40))] = 245  # title text
        y = title_h + int(rng.integers(6, 12))
        line_h, gap = int(rng.integers(3, 5)), int(rng.integers(4, 7))
        while y + line_h < h - 6:
            x = int(rng.integers(8, 16)) + (10 if rng.random() < 0.3 else 0)  # bullet indent
            end = int(rng.integers(w // 2, w - 8))
            while x < end:  # words
                word = int(rng.integers(4, 16))
                f[y : y + line_h, x : min(x + word, end)] = ink
                x += word + int(rng.integers(2, 4))
            y += line_h + gap
        if rng.random() < 0.4:  # a picture block on some slides
            bw, bh = int(rng.integers(30, 50)), int(rng.integers(25, 40))
            bx, by = w - bw - 6, title_h + 8
            f[by : by + bh, bx : bx + bw] = _vivid(rng) * 0.8
        slides.append(f)
    out = np.stack([slides[i // per_slide] for i in range(n)])
    return out.clip(0, 255).astype(np.uint8)


def animation_frames(
    n: int, rng: np.random.Generator, w: int = WIDTH, h: int = HEIGHT, fps: int = FPS
) -> np.ndarray:
    """Drawn animation: a flat vivid background (with a ground band) and 2-4 outlined shapes
    (circles and boxes) moving and bouncing off the edges."""
    yy, xx = _grid(h, w)
    bg = _pastel(rng)
    ground = _pastel(rng) * 0.85
    ground_y = int(rng.integers(int(h * 0.65), int(h * 0.85)))
    base = np.empty((h, w, 3), np.float32)
    base[:] = bg
    base[ground_y:] = ground
    base[ground_y - 2 : ground_y] = 0  # outlined horizon
    shapes = []
    for _ in range(int(rng.integers(4, 8))):
        r = rng.uniform(12, 26)
        shapes.append(
            dict(
                kind="circle" if rng.random() < 0.5 else "box",
                r=r,
                color=_vivid(rng),
                x=rng.uniform(r, w - r),
                y=rng.uniform(r, h - r),
                vx=rng.uniform(2, 7) * rng.choice([-1, 1]),
                vy=rng.uniform(1, 5) * rng.choice([-1, 1]),
            )
        )
    out = np.empty((n, h, w, 3), np.uint8)
    outline = rng.uniform(4.0, 5.5)
    for i in range(n):
        f = base.copy()
        for s in shapes:
            if s["kind"] == "circle":
                d = np.sqrt((xx - s["x"]) ** 2 + (yy - s["y"]) ** 2)
            else:
                d = np.maximum(np.abs(xx - s["x"]), np.abs(yy - s["y"]))
            f[d <= s["r"]] = 0
            f[d <= s["r"] - outline] = s["color"]
            eye = (xx - s["x"] - s["r"] * 0.3) ** 2 + (yy - s["y"] + s["r"] * 0.3) ** 2 <= (
                s["r"] * 0.18
            ) ** 2
            f[eye] = 0  # a cartoon eye
            s["x"] += s["vx"]
            s["y"] += s["vy"]
            for k, lim in (("x", w), ("y", h)):
                v = "v" + k
                if s[k] < s["r"] or s[k] > lim - s["r"]:
                    s[v] = -s[v]
                    s[k] = min(max(s[k], s["r"]), lim - s["r"])
        out[i] = f.clip(0, 255).astype(np.uint8)
    return out


def camera_frames(
    n: int, rng: np.random.Generator, w: int = WIDTH, h: int = HEIGHT, fps: int = FPS
) -> np.ndarray:
    """Camera-like footage: a wide blurred landscape (sky gradient, textured greens and browns)
    panning slowly, with sensor noise, a soft vignette and exposure flicker."""
    speed = rng.uniform(0.8, 2.5) * rng.choice([-1, 1])  # pixels per frame
    wide = w + int(abs(speed) * n) + 8
    yy, xx = _grid(h, wide)
    horizon = rng.uniform(0.3, 0.55) * h + 8 * np.sin(xx[0] / rng.uniform(15, 40) + rng.uniform(0, 6))
    sky_top, sky_low = (
        np.array([rng.uniform(70, 130), rng.uniform(130, 180), rng.uniform(200, 245)]),
        np.array([rng.uniform(170, 220), rng.uniform(190, 225), rng.uniform(215, 245)]),
    )
    t = (yy / h)[..., None]
    sky = sky_top * (1 - t) + sky_low * t
    land_a = np.array([rng.uniform(50, 110), rng.uniform(90, 150), rng.uniform(30, 70)])  # greens
    land_b = np.array([rng.uniform(110, 160), rng.uniform(85, 120), rng.uniform(50, 80)])  # browns
    tex = _box_blur(rng.normal(0, 1, (h, wide, 1)), 3, 2)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-6)
    fine = _box_blur(rng.normal(0, 1, (h, wide, 1)), 1, 1) * 20
    land = land_a * tex + land_b * (1 - tex) + fine
    img = np.where((yy >= horizon[None, :])[..., None], land, sky)
    img = _box_blur(img, 1, 1)  # lens softness
    vy, vx = _grid(h, w)
    vignette = 1 - 0.35 * (((vx - w / 2) / w) ** 2 + ((vy - h / 2) / h) ** 2)[..., None] * 2
    out = np.empty((n, h, w, 3), np.uint8)
    x0 = 4 if speed > 0 else wide - w - 4
    gain0 = rng.uniform(0.9, 1.1)
    for i in range(n):
        x = round(x0 + speed * i)
        f = img[:, x : x + w] * vignette * (gain0 + 0.05 * np.sin(i / 3.0))
        f = f + rng.normal(0, 6, (h, w, 1)) + rng.normal(0, 3, (h, w, 3))
        out[i] = f.clip(0, 255).astype(np.uint8)
    return out


def game_frames(
    n: int, rng: np.random.Generator, w: int = WIDTH, h: int = HEIGHT, fps: int = FPS
) -> np.ndarray:
    """Game-like scene: a scrolling tile world (grass, water, walls, grid lines), a sprite walking
    over it, and a HUD on top (health bar, score box)."""
    tile = int(rng.choice([8, 10, 12]))
    rows, cols = h // tile + 2, (w + n * 4) // tile + 4
    palette = np.array([_dark(rng, 90), _dark(rng, 70), _dark(rng, 130), _vivid(rng) * 0.8])
    kinds = rng.choice(4, size=(rows, cols), p=[0.5, 0.25, 0.17, 0.08])
    world = palette[kinds].repeat(tile, 0).repeat(tile, 1).astype(np.float32)
    world[::tile] *= 0.3  # grid lines
    world[:, ::tile] *= 0.3
    world[tile // 2 :: tile, tile // 2 :: tile] = 255  # a stud per tile
    sprite_size = int(rng.integers(10, 16))
    sprite = np.empty((sprite_size, sprite_size, 3), np.float32)
    sprite[:] = _vivid(rng)
    sprite[[0, -1]] = 0
    sprite[:, [0, -1]] = 0
    sprite[sprite_size // 3, sprite_size // 4 : sprite_size // 4 + 2] = 255  # eyes
    sprite[sprite_size // 3, -sprite_size // 4 - 2 : -sprite_size // 4] = 255
    scroll = rng.uniform(1, 4)
    sx, sy = rng.uniform(20, w - 30), rng.uniform(30, h - 20)
    vx, vy = rng.uniform(2, 5) * rng.choice([-1, 1]), rng.uniform(1, 4) * rng.choice([-1, 1])
    hud_color = _vivid(rng)
    health = rng.uniform(0.4, 1.0)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        x = int(scroll * i)
        f = world[:h, x : x + w].copy()
        px, py = int(sx), int(sy)
        f[py : py + sprite_size, px : px + sprite_size] = sprite
        sx += vx
        sy += vy
        if not 0 <= sx <= w - sprite_size - 1:
            vx, sx = -vx, min(max(sx, 0), w - sprite_size - 1)
        if not 18 <= sy <= h - sprite_size - 1:
            vy, sy = -vy, min(max(sy, 18), h - sprite_size - 1)
        f[:16] = 10  # HUD strip
        hp = max(0.05, health - 0.01 * i)
        f[5:11, 20 : 20 + 50] = 60
        f[5:11, 20 : 20 + int(50 * hp)] = (220, 40, 40) if hp < 0.3 else (40, 210, 60)
        f[4:12, w - 56 : w - 20] = hud_color
        f[6:10, w - 52 : w - 52 + 4 * (i // 5 % 8)] = 255  # a score ticking up
        out[i] = f.clip(0, 255).astype(np.uint8)
    return out


MAKERS = {
    "animation": animation_frames,
    "camera": camera_frames,
    "game": game_frames,
    "slides": slides_frames,
}


# ---- clips --------------------------------------------------------------------------------------
def clip_frames(
    class_name: str,
    index: int,
    *,
    seed: int = 0,
    w: int = WIDTH,
    h: int = HEIGHT,
    fps: int = FPS,
    seconds: tuple[float, float] = (3.0, 6.0),
) -> np.ndarray:
    """The frames (n, h, w, 3) uint8 of clip ``index`` of ``class_name``; n = 3-6 s at ``fps``."""
    rng = np.random.default_rng([seed, CLASSES.index(class_name), index])
    n = round(rng.uniform(*seconds) * fps)
    return MAKERS[class_name](n, rng, w, h, fps)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = FPS) -> Path:
    """Encode ``frames`` (n, h, w, 3) uint8 as H.264 MP4 at ``path``: written under a hidden name
    next to it and renamed, so an interrupted run never leaves a half-written clip."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.part{path.suffix}")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = Fraction(1, fps * 100)
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def write_demo_clips(
    root: str | os.PathLike,
    per_class: int = 30,
    *,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    w: int = WIDTH,
    h: int = HEIGHT,
    fps: int = FPS,
) -> list[Path]:
    """Write ``per_class`` clips of each class to ``root/<class>/<class>_NNN.mp4``; clips already
    there are kept (a rerun only adds what is missing). Returns every clip's path."""
    root = Path(root)
    paths = []
    for name in classes:
        for i in range(per_class):
            path = root / name / f"{name}_{i:03d}.mp4"
            if not path.exists():
                write_video(path, clip_frames(name, i, seed=seed, w=w, h=h, fps=fps), fps)
            paths.append(path)
    return paths
