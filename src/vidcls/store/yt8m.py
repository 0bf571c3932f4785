"""Import YouTube-8M frame-level TFRecords into multi-label stores (``vidcls import yt8m``).

Each record is a ``tf.train.SequenceExample``: the context holds the video id (``id``, or
``video_id`` in older releases) and ``labels`` (int64 class indices into YouTube-8M's vocabulary);
the feature lists ``rgb`` (1024 uint8 per frame) and ``audio`` (128 uint8 per frame), one frame per
second. Frames are dequantized exactly as the YouTube-8M starter code does, ``q * (max - min) / 255
+ (max - min) / 512 + min`` with max 2 and min -2, and a frame's stored feature is the chosen
features side by side (rgb then audio: 1152 values). Frame ``i`` gets ``timestamps_ms`` ``1000 * i``.

Only the classes some imported video carries are kept, renumbered 0..K-1 in ascending YouTube-8M
index order; the store's ``extractor`` records the original indices (``yt8m_label_index``). Videos
without labels (YouTube-8M has some; its test partition has no labels at all) are skipped and
counted. The files are read twice: labels and ids first, then the frames. The records and the
protobuf messages are read by :mod:`vidcls.store.tfrecord`, without TensorFlow.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, StoreError
from .labels import LABEL_SEP
from .npy import write_atomically
from .tfrecord import Feature, ProtoError, iter_records, parse_sequence_example
from .writer import write_store

FEATURES = ("rgb", "audio")  # the frame-level feature lists, in the order they are concatenated
QUANTIZE_MAX, QUANTIZE_MIN = 2.0, -2.0
_ID_KEYS = ("id", "video_id")  # newer releases, older ones

Pattern = str | os.PathLike | Sequence[str | os.PathLike]


def dequantize_table(max_value: float = QUANTIZE_MAX, min_value: float = QUANTIZE_MIN) -> np.ndarray:
    """The float32 value of every quantized byte 0..255, computed as the starter code's ``Dequantize``.

    That is ``q * scalar + bias`` in float32 with ``scalar = (max - min) / 255`` and ``bias = (max - min)
    / 512 + min`` (the half-step puts each value in the middle of its quantization bin).
    """
    span = max_value - min_value
    scalar, bias = np.float32(span / 255.0), np.float32(span / 512.0 + min_value)
    return np.arange(256, dtype=np.float32) * scalar + bias


@dataclass
class _Split:
    """One split's files and what the first pass counted."""

    name: str
    option: str  # "--train", for messages
    files: list[Path]
    videos: int = 0
    skipped: int = 0
    labels: int = 0
    frames: int = 0


@dataclass
class _Job:
    """What the second pass needs: the features to read, their widths, the class renumbering."""

    features: tuple[str, ...]
    widths: dict[str, int]
    remap: dict[int, int]
    lut: np.ndarray = field(default_factory=dequantize_table)


class Yt8mImport(dict[str, Path]):
    """``{split: path written}``, plus what was imported.

    Attributes:
        videos: {split: videos written}. skipped: {split: videos without labels, not written}.
        frames: {split: frames written}. labels: {split: labels written, over all its videos}.
        class_names: the store's classes, in store order. label_index: each class's YouTube-8M index.
        features: the feature lists concatenated, e.g. ["rgb", "audio"]. feature_dim: D.
    """

    def __init__(self, paths: dict[str, Path], splits: list[_Split], *, class_names: list[str], job: _Job):
        super().__init__(paths)
        self.videos = {s.name: s.videos for s in splits}
        self.skipped = {s.name: s.skipped for s in splits}
        self.frames = {s.name: s.frames for s in splits}
        self.labels = {s.name: s.labels for s in splits}
        self.class_names = list(class_names)
        self.label_index = sorted(job.remap, key=job.remap.__getitem__)
        self.features = list(job.features)
        self.feature_dim = sum(job.widths.values())

    def summary(self) -> str:
        """A few lines for the terminal: videos per split, classes, labels per video."""
        lines = []
        for split, path in self.items():
            n = self.videos[split]
            skipped = (
                f", {self.skipped[split]:,} videos without labels skipped" if self.skipped[split] else ""
            )
            lines.append(
                f"{split}: {n:,} videos, {self.frames[split]:,} frames, "
                f"{self.labels[split] / max(n, 1):.2f} labels per video{skipped} -> {path}"
            )
        lines.append(
            f"{len(self.class_names):,} classes (the YouTube-8M classes these videos carry, renumbered "
            f"0..{len(self.class_names) - 1}); features {'+'.join(self.features)}, D={self.feature_dim}"
        )
        return "\n".join(lines)


def import_yt8m(
    out_dir: str | os.PathLike,
    *,
    train: Pattern,
    val: Pattern | None = None,
    test: Pattern | None = None,
    vocabulary: str | os.PathLike | None = None,
    features: Sequence[str] = FEATURES,
    dtype: str = "float16",
) -> Yt8mImport:
    """Build multi-label split stores from YouTube-8M frame-level TFRecord files.

    YouTube-8M's "validate" partition is the usual ``val`` (and part of it ``test``: the "test"
    partition has no labels, so all its videos would be skipped). Every split is written into a
    temporary directory inside ``out_dir`` and moved into place only when all of them succeeded.

    Args:
        out_dir: where {split}.h5 files are written.
        train, val, test: a glob pattern (``**`` recursive) or a file, or a list of them, per split.
        vocabulary: YouTube-8M's vocabulary.csv (columns Index, Name, ...) for the class names;
            without it a class is named ``class_<index>``.
        features: the feature lists to store, any of "rgb", "audio" (concatenated in that order).
        dtype: stored dtype, "float16" or "float32".

    Returns:
        ``{split: path written}`` (a :class:`Yt8mImport`, which also counts what was imported).

    Raises:
        ConfigError: an unknown or repeated feature name.
        StoreError: a pattern that matches no file; a file that is not a TFRecord, is truncated or
            fails a checksum (naming the file and record); a record that is not a frame-level
            SequenceExample, lacks a feature list, or has frames of different widths (naming the
            file, record and video id); a video id twice; a split without labelled videos; a label
            missing from the vocabulary; OUT_DIR holding a split file this import would not
            overwrite. Nothing in OUT_DIR changes in those cases.
    """
    out_dir, chosen = Path(out_dir), _check_features(features)
    given: dict[str, Pattern | None] = {"train": train, "val": val, "test": test}
    splits = [_Split(s, f"--{s}", _expand(f"--{s}", p)) for s, p in given.items() if p is not None]
    stale = [f"{s}.h5" for s, p in given.items() if p is None and (out_dir / f"{s}.h5").exists()]
    if stale:
        raise StoreError(
            f"{out_dir} already holds {stale}, which this import does not produce; "
            f"remove them or choose another OUT_DIR"
        )
    first_seen, widths = _scan(splits, chosen)
    index = sorted(first_seen)
    names = _class_names(index, first_seen, vocabulary)
    job = _Job(chosen, widths, {original: i for i, original in enumerate(index)})
    dim = sum(widths.values())

    def writer(split: _Split) -> Callable[[Path], object]:
        return lambda out: write_store(
            out, _videos(job, split), names, dim, _extractor(job), dtype=dtype, multilabel=True
        )

    paths = write_atomically(out_dir, {s.name: writer(s) for s in splits})
    return Yt8mImport(paths, splits, class_names=names, job=job)


def _extractor(job: _Job) -> dict:
    """The store's ``extractor``: where the features come from and each class's YouTube-8M index."""
    return {
        "source": "yt8m",
        "features": list(job.features),
        "feature_widths": job.widths,
        "yt8m_label_index": sorted(job.remap, key=job.remap.__getitem__),
        "dequantize": {
            "max": QUANTIZE_MAX,
            "min": QUANTIZE_MIN,
            "formula": "q*(max-min)/255+(max-min)/512+min",
        },
        "frames_per_second": 1,
    }


def _check_features(features: Sequence[str]) -> tuple[str, ...]:
    names = [features] if isinstance(features, str) else list(features)
    unknown = [f for f in names if f not in FEATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"--features {','.join(map(str, names))!r}: give one or both of {','.join(FEATURES)}, each once"
        )
    return tuple(f for f in FEATURES if f in names)


def _expand(option: str, pattern: Pattern) -> list[Path]:
    """The files a split's pattern(s) match, sorted, each once."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files: dict[Path, None] = {}
    for p in patterns:
        text = os.path.expanduser(os.fspath(p))
        matched = sorted(Path(m) for m in glob.glob(text, recursive=True) if os.path.isfile(m))
        if not matched and os.path.isfile(text):  # a file whose name holds [ ] * ?
            matched = [Path(text)]
        if not matched:
            raise StoreError(
                f"{option} {text!r} matches no files; check the pattern (quote it, e.g. "
                f"'{option} \"frame/train*.tfrecord\"', so that the shell leaves it to vidcls)"
            )
        files.update(dict.fromkeys(matched))
    return list(files)


def _records(path: Path, *, feature_lists: bool) -> Iterator[tuple[str, bytes, dict, dict]]:
    """(where, record, context, feature lists) of each record of ``path``; ``where`` names file and record."""
    for i, record in enumerate(iter_records(path)):
        where = f"{path}: record {i}"
        yield (where, record, *_parse(record, where, feature_lists=feature_lists))


def _parse(record: bytes, where: str, *, feature_lists: bool) -> tuple[dict, dict]:
    try:
        return parse_sequence_example(record, feature_lists=feature_lists)
    except ProtoError as err:
        raise StoreError(f"{where}: not a tf.train.SequenceExample ({err}); {_FRAME_LEVEL}") from None


_FRAME_LEVEL = "vidcls import yt8m reads YouTube-8M's frame-level TFRecords (frame/*.tfrecord)"


def _identity(context: dict[str, Feature], where: str) -> tuple[str, list[int]]:
    """A record's video id and its sorted, distinct labels (empty: none)."""
    if "mean_rgb" in context or "mean_audio" in context:
        raise StoreError(f"{where}: a video-level record (mean_rgb, mean_audio); {_FRAME_LEVEL}")
    ids = [context[k][1] for k in _ID_KEYS if k in context and context[k][0] == "bytes_list"]
    if not ids or len(ids[0]) != 1 or not ids[0][0]:
        raise StoreError(f"{where}: no video id (a context bytes_list 'id' or 'video_id'); {_FRAME_LEVEL}")
    try:
        vid = bytes(ids[0][0]).decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{where}: video id {ids[0][0][:40]!r} is not UTF-8 text") from None
    kind, labels = context.get("labels", ("", []))
    if kind not in ("", "int64_list"):
        raise StoreError(f"{where} (video {vid!r}): 'labels' is a {kind}, not an int64_list; {_FRAME_LEVEL}")
    if any(v < 0 for v in labels):
        raise StoreError(
            f"{where} (video {vid!r}): negative label {min(labels)}; the file is not YouTube-8M's"
        )
    return vid, sorted(set(labels))


def _scan(splits: list[_Split], features: tuple[str, ...]) -> tuple[dict[int, str], dict[str, int]]:
    """First pass (labels and ids only): count every split, check ids are unique across all of them.

    Returns:
        ({YouTube-8M label: where it first occurs}, {feature: width} of the first labelled video).
    """
    seen: dict[str, str] = {}  # video id -> the split and file holding it
    first_seen: dict[int, str] = {}
    widths: dict[str, int] = {}
    for split in splits:
        for path in split.files:
            source = f"{split.option} file {path}"
            for where, record, context, _ in _records(path, feature_lists=False):
                vid, labels = _identity(context, where)
                if not labels:
                    split.skipped += 1
                    continue
                if vid in seen:
                    raise StoreError(
                        f"{where}: video {vid!r} is also in {seen[vid]}; each video may be imported "
                        f"once (a file given twice, or overlapping patterns?)"
                    )
                seen[vid] = source
                split.videos, split.labels = split.videos + 1, split.labels + len(labels)
                for label in labels:
                    first_seen.setdefault(label, f"{where} (video {vid!r})")
                if not widths:  # the first labelled video sets every feature's width
                    lists = _parse(record, where, feature_lists=True)[1]
                    widths = {
                        f: _frame_bytes(lists, f, f"{where} (video {vid!r})", None).shape[1] for f in features
                    }
        if not split.videos:
            held = f"none of the {split.skipped:,} videos" if split.skipped else "no video is"
            raise StoreError(
                f"{split.option}: {held} in its {len(split.files)} file(s) carries a label (YouTube-8M's "
                f"test partition has none); use labelled files, e.g. part of 'validate' as {split.option}"
            )
    return first_seen, widths


def _class_names(
    index: list[int], first_seen: dict[int, str], vocabulary: str | os.PathLike | None
) -> list[str]:
    """The store's class names: vocabulary names or class_<i>.

    A name holding "|" gets "/" instead; two equal names get their index appended ("Name (12)").
    """
    if vocabulary is None:
        return [f"class_{i}" for i in index]
    path = Path(vocabulary)
    vocab = _read_vocabulary(path)
    missing = [i for i in index if i not in vocab]
    if missing:
        raise StoreError(
            f"{path}: label {missing[0]} of {first_seen[missing[0]]} is not in the vocabulary "
            f"({len(missing)} label(s) missing: {missing[:10]}); use the vocabulary.csv of the same release"
        )
    # "|" separates the labels of a video in label-set text ("dog|music"): a name may not hold it
    names = [vocab[i].replace(LABEL_SEP, "/") or f"class_{i}" for i in index]
    return [f"{n} ({i})" if names.count(n) > 1 else n for n, i in zip(names, index)]


def _read_vocabulary(path: Path) -> dict[int, str]:
    """{Index: Name} of YouTube-8M's vocabulary.csv."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            if "Index" not in header or "Name" not in header:
                raise StoreError(f"{path}: header must contain Index and Name (header is {header[:8]})")
            reader.fieldnames = header
            vocab: dict[int, str] = {}
            for line, row in enumerate(reader, start=2):
                text = (row.get("Index") or "").strip()
                if not text.isdigit():
                    raise StoreError(f"{path} line {line}: Index {text!r} is not a whole number >= 0")
                if int(text) in vocab:
                    raise StoreError(f"{path} line {line}: Index {text} is given twice")
                vocab[int(text)] = (row.get("Name") or "").strip()
    except OSError as err:
        raise StoreError(
            f"cannot read vocabulary {path} ({err.strerror or err}); check --vocabulary"
        ) from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise StoreError(
            f"{path}: not a readable UTF-8 CSV ({err}); give YouTube-8M's vocabulary.csv"
        ) from None
    return vocab


def _frame_bytes(lists: dict[str, list[Feature]], name: str, where: str, width: int | None) -> np.ndarray:
    """The (T, W) uint8 frames of one feature list, every frame ``width`` bytes (None: the first's)."""
    steps = lists.get(name)
    if not steps:
        raise StoreError(f"{where}: no {name!r} frames; {_FRAME_LEVEL} (or leave {name} out of --features)")
    values = [v for kind, v in steps if kind == "bytes_list" and len(v) == 1]
    if len(values) != len(steps):
        t = next(i for i, (kind, v) in enumerate(steps) if kind != "bytes_list" or len(v) != 1)
        raise StoreError(f"{where}: frame {t} of {name!r} is not one byte string; {_FRAME_LEVEL}")
    frames = [v[0] for v in values]
    width = len(frames[0]) if width is None else width
    bad = next((t for t, f in enumerate(frames) if len(f) != width or not f), None)
    if bad is not None:
        raise StoreError(
            f"{where}: frame {bad} of {name!r} has {len(frames[bad])} values, other frames {width}; "
            f"frames of different widths (the first video of the import sets the width)"
        )
    return np.frombuffer(b"".join(frames), dtype=np.uint8).reshape(len(frames), width)


def _videos(job: _Job, split: _Split) -> Iterator[tuple[str, np.ndarray, list[int], np.ndarray]]:
    """Second pass: (video id, dequantized (T, D) float32, store labels, timestamps) per labelled video."""
    for path in split.files:
        for where, _, context, lists in _records(path, feature_lists=True):
            vid, labels = _identity(context, where)
            if not labels:
                continue
            at = f"{where} (video {vid!r})"
            frames = [_frame_bytes(lists, f, at, job.widths[f]) for f in job.features]
            counts = {f: len(a) for f, a in zip(job.features, frames)}
            if len(set(counts.values())) > 1:
                raise StoreError(
                    f"{at}: the feature lists have different frame counts {counts}; "
                    f"the file is damaged (or import one feature list with --features)"
                )
            if any(v not in job.remap for v in labels):
                raise StoreError(f"{at}: labels {labels} differ from the first pass; was the file changed?")
            features = np.concatenate([job.lut[a] for a in frames], axis=1)
            split.frames += len(features)
            yield vid, features, [job.remap[v] for v in labels], 1000.0 * np.arange(len(features))
