"""Tests for vidcls.cli: train flags made from TrainConfig, validation before writing, error policy."""

from __future__ import annotations

import dataclasses
import errno
import re
from pathlib import Path

import pytest

from vidcls import cli
from vidcls.config import TrainConfig
from vidcls.errors import ConfigError, RunLockedError, StoreError

# the flag names users and scripts already rely on
EXISTING_FLAGS = (
    "--epochs --batch-size --lr --weight-decay --model --hidden-dim --layers --heads --dropout "
    "--patience-cycles --select --seed --device --workers --monitor-interval --val-fraction --sampler "
    "--alpha --gamma --smoothing --members --tta --tta-modes --no-augment --no-plots --resume --config"
).split()


def train_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_option_is_a_flag_and_old_names_still_work():
    flags = {s for a in train_parser()._actions for s in a.option_strings}
    assert set(EXISTING_FLAGS) <= flags
    for f in dataclasses.fields(TrainConfig):
        if f.name == "features_dir":
            continue
        flag = "--" + f.name.replace("_", "-")
        assert flag in flags, flag
        if f.type == "bool":
            assert f"--no-{f.name.replace('_', '-')}" in flags


def test_flags_reach_the_config_with_their_types():
    args = train_parser().parse_args(
        (
            "F R --grad-clip 2.5 --t0 7 --weight-clip 0.25,4 --tta-modes reverse --no-augment --plots "
            "--eta-min 0"
        ).split()
    )
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    assert overrides["batch_size"] is None and overrides["features_dir"] == "F"
    from vidcls.config import load_config

    cfg = load_config(None, overrides)
    assert (cfg.grad_clip, cfg.t0, cfg.weight_clip, cfg.tta_modes) == (2.5, 7, [0.25, 4.0], ["reverse"])
    assert cfg.augment is False and cfg.plots is True and cfg.eta_min == 0.0
    assert cfg.batch_size == TrainConfig().batch_size  # not given: the dataclass default


def test_train_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    shown = {
        "epochs": "150",
        "batch_size": "48",
        "lr": "0.001",
        "weight_decay": "0.0005",
        "seed": "42",
        "weight_clip": "0.5,10.0",
        "augment": "on",
        "monitor_interval": "1800.0",
        "tta_modes": "original,reverse,speed_up,speed_down",
    }
    for name, value in shown.items():
        start = re.search(f"--{name.replace('_', '-')}[ ,]", text[text.index("options:") :]).start()
        start += text.index("options:")
        assert text[start:].split("(default: ", 1)[1].startswith(value + ")"), name
    assert "biases and LayerNorm weights" in text  # weight decay says where it applies


# ------------------------------------------------------------------ validation before anything is written


@pytest.mark.parametrize(
    "flags,option",
    [
        (["--monitor-interval", "0"], "--monitor-interval"),
        (["--seed", str(2**63)], "--seed"),
        (["--seed", "-1"], "--seed"),
        (["--model", "lstm9000"], "--model"),
        (["--hidden-dim", "15", "--heads", "5"], "hidden_dim"),  # bilstm_attn needs an even width
        (["--hidden-dim", "16", "--heads", "3"], "heads"),
        (["--model", "transformer", "--hidden-dim", "10", "--heads", "4"], "heads"),
        (["--tta-modes", "reverse,reverse"], "--tta-modes"),
        (["--tta-modes", ","], "--tta-modes"),
        (["--tta-modes", "flip"], "--tta-modes"),
    ],
)
def test_invalid_options_exit_2_before_writing(tiny_features, tmp_path, capsys, tiny_args, flags, option):
    run = tmp_path / "run"
    assert cli.main(["train", str(tiny_features), str(run), "--epochs", "1", *tiny_args, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls train: error: ") and err.count("\n") == 1, err
    assert option in err
    assert not run.exists()


def test_fit_validates_a_config_from_the_python_api(tiny_features, tmp_path):
    from vidcls.training.fit import fit

    cfg = dataclasses.replace(
        TrainConfig(),
        features_dir=str(tiny_features),
        model="bilstm_attn",
        hidden_dim=15,
        heads=5,
        device="cpu",
        workers=0,
    )
    with pytest.raises(ConfigError, match="hidden_dim"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ error policy


def raising(exc):
    def command(args):
        raise exc

    return command


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("--lr must be > 0"),
        StoreError("x.h5 is damaged"),
        RunLockedError("run is in use by pid 7 (vidcls train)"),
    ],
)
def test_vidcls_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    monkeypatch.setitem(cli.COMMANDS, "report", raising(exc))
    assert cli.main(["report", "somewhere"]) == 2
    assert capsys.readouterr().err == f"vidcls report: error: {exc}\n"


@pytest.mark.parametrize(
    "code",
    [
        errno.ENOSPC,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENOENT,
        errno.EDQUOT,
    ],
)
def test_user_os_errors_name_the_path_exit_2(monkeypatch, capsys, code):
    exc = OSError(code, "some system text", "/data/runs/r1/members/0/checkpoints/last.pt")
    monkeypatch.setitem(cli.COMMANDS, "train", raising(exc))
    assert cli.main(["train", "F", "R"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "vidcls train: error: /data/runs/r1/members/0/checkpoints/last.pt: some system text"
    )
    assert err.count("\n") == 1


def test_disk_full_during_an_atomic_write_names_the_file(monkeypatch, capsys, tmp_path):
    from vidcls.utils.fs import atomic_write_text

    def write_fails(*args):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a failed write() carries: no name

    def command(args):
        monkeypatch.setattr("os.fsync", write_fails)
        atomic_write_text(tmp_path / "summary.json", "{}")

    monkeypatch.setitem(cli.COMMANDS, "report", command)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "summary.json") in err and "No space left" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_diverged_training_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(
        cli.COMMANDS, "train", raising(FloatingPointError("training loss became nan; lower --lr"))
    )
    assert cli.main(["train", "F", "R"]) == 2
    assert capsys.readouterr().err == "vidcls train: error: training loss became nan; lower --lr\n"


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bug"),
        KeyError("bug"),
        RuntimeError("bug"),
        TypeError("bug"),
        OSError(errno.EIO, "Input/output error", "/x"),
        OSError("no errno"),
    ],
)
def test_other_exceptions_are_bugs_and_propagate(monkeypatch, exc):
    monkeypatch.setitem(cli.COMMANDS, "evaluate", raising(exc))
    with pytest.raises(type(exc)):
        cli.main(["evaluate", "R"])


def test_ctrl_c_exits_130(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "evaluate", raising(KeyboardInterrupt()))
    assert cli.main(["evaluate", "R"]) == 130


def test_run_dir_under_a_regular_file(tiny_features, tmp_path, capsys, tiny_args):
    (tmp_path / "afile").write_text("not a directory")
    run = tmp_path / "afile" / "run"
    assert cli.main(["train", str(tiny_features), str(run), "--epochs", "1", *tiny_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcls train: error: ") and err.count("\n") == 1, err
    assert str(run) in err and "Traceback" not in err


def test_a_value_error_inside_a_command_propagates(monkeypatch, tiny_features, tmp_path, tiny_args):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr("vidcls.training.fit.load_splits", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["train", str(tiny_features), str(tmp_path / "run"), "--epochs", "1", *tiny_args])


# ------------------------------------------------------------------ info


def test_info_on_a_directory_lists_its_h5_files(tiny_features, tmp_path, capsys):
    assert cli.main(["info", str(tiny_features)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one .h5" in err and "delete" not in err
    for name in ("train.h5", "val.h5", "test.h5"):
        assert name in err
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "no .h5 file" in capsys.readouterr().err
    assert cli.main(["info", str(Path(tiny_features) / "train.h5")]) == 0


def test_the_largest_accepted_seed_trains(tiny_features, tmp_path, tiny_args):
    run = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                str(tiny_features),
                str(run),
                "--epochs",
                "1",
                "--no-plots",
                "--seed",
                str(2**63 - 1),
                *tiny_args,
            ]
        )
        == 0
    )
    assert (run / "summary.json").is_file()


def test_train_flags_are_never_abbreviations(tmp_path, capsys):
    """The retired --patience (epochs) must not be taken as a prefix of --patience-cycles."""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", str(tmp_path), str(tmp_path / "run"), "--patience", "5"])
    assert info.value.code == 2 and "--patience" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_closed_stdout_ends_a_command_quietly_with_sigpipes_status(tiny_features):
    """``vidcls info F | head -0``: the reader is gone before the first line is written."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "vidcls", "info", str(tiny_features / "train.h5")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # long before the interpreter has started and printed anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
