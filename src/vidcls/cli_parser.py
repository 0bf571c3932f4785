"""The argument parser of ``vidcls <command>``: every subcommand's options (the train command's are made
from the ``TrainConfig`` fields). :mod:`vidcls.cli` runs the commands."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import get_type_hints

from . import __version__
from .config import TTA_SETTINGS, TrainConfig

# The train command's flags are made from the TrainConfig fields (one source of names, types,
# defaults and help): --batch-size sets batch_size, bools get --x / --no-x.
_POSITIONAL = ("features_dir",)
_METAVARS = {int: "N", float: "X", str: "NAME"}
DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto)"
TTA_CHOICES = " | ".join(TTA_SETTINGS)
Subparsers = argparse._SubParsersAction  # what add_subparsers returns: each command's add_parser


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig()
    help_of = {f.name: f.metadata.get("help", "").replace("%", "%%") for f in fields(TrainConfig)}
    p.add_argument("features_dir", help=help_of["features_dir"])
    p.add_argument("run_dir", help="directory for config, checkpoints, metrics, plots, summary")
    p.add_argument("--config", metavar="YAML", help="YAML file with any of the options below (flags win)")
    for f in fields(TrainConfig):
        if f.name in _POSITIONAL:
            continue
        flag, typ = "--" + f.name.replace("_", "-"), hints[f.name]
        help_ = f"{help_of[f.name]} (default: {_shown(getattr(defaults, f.name))})".lstrip()
        if typ is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:  # lists arrive as "a,b"; load_config splits and types them
            p.add_argument(
                flag,
                type=typ if typ in _METAVARS else str,
                default=None,
                metavar=_METAVARS.get(typ, "A,B"),
                help=help_,
            )
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR where it stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidcls", description="Two-stage video classification.")
    parser.add_argument("--version", action="version", version=f"vidcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # no abbreviations: the retired --patience would silently mean --patience-cycles
    _add_train_args(
        sub.add_parser("train", help="train a temporal classifier on a feature store", allow_abbrev=False)
    )

    _add_extract_parser(sub)
    _add_merge_parser(sub)
    _add_scoring_parsers(sub)
    _add_predict_parser(sub)
    _add_watch_parser(sub)
    _add_serving_parsers(sub)
    _add_data_parsers(sub)
    return parser


LABELS_HELP = (  # extract --labels
    "take the videos and labels from CSV, not from class folders: header video,label[,split] (the first "
    "column may also be called path or video_path); video: a path relative to VIDEO_ROOT; label: one label "
    "or several as a|b (any row with several: a multi-label store); split: train/val/test (without it "
    "--split and --seed split the videos). Unlisted files are not extracted"
)


def _add_extract_parser(sub: Subparsers) -> None:
    from .features.catalog import FAMILIES_HELP, recommended_table

    p = sub.add_parser(
        "extract",
        help="turn a folder of videos into a feature store (resumable)",
        epilog=recommended_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "video_root", help="VIDEO_ROOT/<class>/<video> or VIDEO_ROOT/{train,val,test}/<class>/<video>"
    )
    p.add_argument("features_dir", help="output: train.h5, val.h5, test.h5, extract_report.json")
    p.add_argument("--labels", metavar="CSV", default=None, help=LABELS_HELP)
    p.add_argument(
        "--backbone",
        default="efficientnet_v2_s",
        help=f"{FAMILIES_HELP}; see the list below (efficientnet_v2_s)",
    )
    p.add_argument(
        "--weights",
        default="DEFAULT",
        help="DEFAULT (the published weights: torchvision's enum default, timm's pretrained tag, "
        "open_clip's TAG; a download) | none (seeded random network) | PATH (.pth, .pt, "
        ".safetensors state dict, sha256 recorded) | a torchvision weights enum name (DEFAULT)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=None, help="frames per second of video (1.0 unless --frames)")
    g.add_argument("--frames", type=int, default=None, help="a fixed number of frames spread uniformly")
    p.add_argument(
        "--max-frames", type=int, default=64, help="at most this many, uniform over the video (64)"
    )
    p.add_argument(
        "--image-size",
        default="AUTO",
        help="crop size, or AUTO for the model's own (AUTO); DINOv2's own 518 px is 1,370 tokens a "
        "frame: 224 on a CPU",
    )
    p.add_argument("--batch-size", type=int, default=32, help="frames per encoder batch (32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--decode-workers", type=int, default=2, help="decoding processes beside the CNN (2)")
    p.add_argument(
        "--split", default="70,20,10", help="train,val,test shares without split folders (70,20,10)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of that split (42)")
    p.add_argument("--min-brightness", type=float, default=25.0, help="drop darker frames, 0-255 (25)")
    p.add_argument(
        "--min-sharpness",
        type=float,
        default=0.0,
        help="drop frames with a lower Laplacian variance (0: off)",
    )
    p.add_argument(
        "--shard",
        metavar="I/K",
        default=None,
        help="extract only shard I (0-based) of K, a share balanced by size, into <split>-0000I-of-0000K.h5 "
        "(separate machines; under torchrun each rank takes RANK/WORLD_SIZE)",
    )


def _add_merge_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "merge", help="turn the shards of a sharded extraction into train.h5 / val.h5 / test.h5"
    )
    p.add_argument(
        "features_dir", help="FEATURES_DIR holding <split>-0000I-of-0000K.h5 and their shard reports"
    )
    p.add_argument(
        "--keep-shards", action="store_true", help="keep the shard files (default: removed once merged)"
    )


FEATURES_DIR_HELP = (
    "the run's feature stores, when they are no longer where training found them "
    "(default: the directory recorded in config.yaml)"
)


def _add_scoring_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="score a trained run's members, TTA and ensemble on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument(
        "--tta",
        choices=TTA_SETTINGS,
        default=None,
        help=f"{TTA_CHOICES} (default: the run's own; another writes eval_<split>.tta-<x>.json)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--features-dir", metavar="DIR", help=FEATURES_DIR_HELP)


def _add_predict_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "predict",
        help="classify videos (files, folders) or .npy features with a trained run",
        epilog="exit status: 0 done (some inputs may be error records), 3 no input could be used, "
        "2 a user error, 141 stdout closed by its reader",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="video files, folders (recursive), .npy (T, D) features"
    )
    p.add_argument(
        "--format",
        choices=["table", "json", "jsonl", "csv"],
        default=None,
        help="(default: the --output file's extension, else table)",
    )
    p.add_argument("--top-k", type=int, default=3, help="classes per video (3)")
    p.add_argument(
        "--output",
        metavar="FILE",
        help="write here instead of stdout; jsonl: append, and a rerun "
        "skips the inputs already written; a file holding anything "
        "else (or an input) is refused, untouched",
    )
    p.add_argument(
        "--timeline", metavar="DIR", help="one PNG per video: thumbnails along time with attention"
    )
    p.add_argument(
        "--segments",
        metavar="WINDOW",
        default=None,
        help="also classify sliding windows: 10s (seconds) or 10 (frames); 'run': the run's typical length",
    )
    p.add_argument(
        "--stride",
        metavar="STEP",
        default=None,
        help="step between windows, in the window's unit (default: half the window)",
    )
    p.add_argument("--tta", choices=TTA_SETTINGS, default="auto", help="auto: the run's own choice")
    p.add_argument("--batch-size", type=int, default=16, help="videos per model call (16)")
    p.add_argument("--decode-workers", type=int, default=2, help="decoding processes beside the models (2)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--weights",
        metavar="PATH",
        help="the encoder weights (.pth, .pt, .safetensors), where the "
        "recorded file or download is not on this machine",
    )


SIGNED_VALUES = ("--segments", "--stride")  # lengths a user may type negative by mistake


def glue_signed(argv: list[str]) -> list[str]:
    """``--segments -5s`` as ``--segments=-5s``: argparse takes a value that starts with "-" for an
    option and answers with its usage; glued, the value reaches the check that says what is wrong."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if out and out[-1] in SIGNED_VALUES and arg.startswith("-") and argv[i - 1] == out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


WATCH_EPILOG = (
    "One JSON line per window as soon as its frames are in (latency_s: from its last frame's arrival to "
    "its line). Exit status: 0 the stream ended (the frames after the last window get one more) or "
    "Ctrl-C; 2 a user error (an option, the run, an unknown --format), before the source is opened; "
    "4 the source could not be opened, sent nothing for --timeout seconds (stalled) or disappeared; "
    "141 stdout closed by its reader"
)


def _add_watch_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "watch",
        help="classify a live stream (device, rtsp/http URL, growing file, pipe) window by window",
        epilog=WATCH_EPILOG,
    )
    p.add_argument("run_dir")
    p.add_argument(
        "source",
        help="what FFmpeg opens live: /dev/video0 (with --format v4l2), rtsp://..., http://..., a growing "
        "MPEG-TS / Matroska / fragmented MP4 file, - or pipe:0 for stdin",
    )
    p.add_argument(
        "--segments",
        metavar="WINDOW",
        default=None,
        help="window length: 10s (seconds) or 10 (frames) (default: the run's typical length)",
    )
    p.add_argument(
        "--stride",
        metavar="STEP",
        default=None,
        help="step between windows, in the window's unit (default: half the window)",
    )
    p.add_argument("--format", default=None, metavar="FMT", help="FFmpeg input format (v4l2, mpegts, ...)")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a source that sends no frame for this long has stalled: exit 4 (10)",
    )
    p.add_argument("--output", metavar="FILE.jsonl", help="append the lines here instead of stdout")
    p.add_argument("--top-k", type=int, default=3, help="classes per window (3)")
    p.add_argument("--tta", choices=TTA_SETTINGS, default="auto", help="auto: the run's own choice")
    p.add_argument(
        "--batch-size", type=int, default=4, help="frames per CNN call; each call is padded to it (4)"
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--weights",
        metavar="PATH",
        help="the encoder weights (.pth, .pt, .safetensors), where the "
        "recorded file or download is not on this machine",
    )


def _add_serving_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    p.add_argument("run_dir")

    p = sub.add_parser("serve", help="serve a trained run over HTTP: JSON API and an upload page")
    p.add_argument("run_dir")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (127.0.0.1); any other needs VIDCLS_API_KEY, sent as X-API-Key",
    )
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest request body in MB (500)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting or running; more get 503 (8)")
    p.add_argument(
        "--max-uploads",
        type=int,
        default=8,
        help="uploads being received at once, apart from --max-queue; more get 503 (8)",
    )
    p.add_argument(
        "--body-timeout",
        default="30",
        metavar="SECONDS",
        help="a request body from which nothing arrives for this long gets 408 (30)",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="the encoder weights of the run's extractor (.pth, .pt, .safetensors), when the recorded "
        "file or download is not on this machine",
    )

    p = sub.add_parser(
        "calibrate", help="fit temperature scaling and the OOD threshold of a run on validation"
    )
    p.add_argument("run_dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--features-dir", metavar="DIR", help=FEATURES_DIR_HELP)


def _add_data_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("synth", help="write a synthetic feature store (train/val/test)")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "demo",
        help="clips -> features -> a 3-member ensemble and a baseline -> predictions, "
        "on CPU (under a minute on 2 cores)",
    )
    p.add_argument("run_dir", nargs="?", default=None, help="runs/demo (--synthetic: runs/demo-synthetic)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs at most (30 for the clips: two LR cycles, 10 + 20; 40 with --synthetic)",
    )
    p.add_argument("--clips-per-class", type=int, default=50, help="generated clips of each class (50)")
    p.add_argument(
        "--synthetic", action="store_true", help="the older variant: synthetic features, no videos"
    )

    p = sub.add_parser("info", help="describe a feature store file")
    p.add_argument("file")

    p = sub.add_parser("import", help="convert existing features into the feature store")
    imp = p.add_subparsers(dest="format", required=True, metavar="FORMAT")
    q = imp.add_parser("padded-h5", help="padded (N, max_frames, D) HDF5 with num_frames + category_mapping")
    q.add_argument("src")
    q.add_argument("out")
    q = imp.add_parser("npy", help="one <video_id>.npy (T, D) per video + CSV video_id,label[,split]")
    q.add_argument("npy_dir")
    q.add_argument("labels_csv")
    q.add_argument("out_dir")
    _add_yt8m_parser(imp)


def _add_yt8m_parser(imp: Subparsers) -> None:
    q = imp.add_parser(
        "yt8m",
        help="YouTube-8M frame-level TFRecords (multi-label; no TensorFlow needed)",
        description="Read YouTube-8M frame-level TFRecords into multi-label stores OUT_DIR/{train,val,test}.h5. "
        "Quote the GLOBs so that the shell leaves them to vidcls. YouTube-8M's 'validate' files make the "
        "usual --val (its 'test' files carry no labels). Only the classes the imported videos carry are "
        "kept, renumbered 0..K-1; the store's extractor records their YouTube-8M indices.",
    )
    q.add_argument("out_dir")
    q.add_argument(
        "--train", required=True, metavar="GLOB", help="training files, e.g. 'frame/train*.tfrecord'"
    )
    q.add_argument("--val", metavar="GLOB", help="validation files, e.g. 'frame/validate*.tfrecord'")
    q.add_argument("--test", metavar="GLOB", help="test files (labelled ones: part of 'validate')")
    q.add_argument(
        "--vocabulary", metavar="CSV", help="YouTube-8M's vocabulary.csv for class names (else class_<index>)"
    )
    q.add_argument(
        "--features", default="rgb,audio", help="rgb | audio | rgb,audio (D = 1024 + 128) (rgb,audio)"
    )
    q.add_argument(
        "--dtype", default="float16", choices=("float16", "float32"), help="stored dtype (float16)"
    )
