"""Tests for vidcls.config: spec defaults, YAML/CLI layering, error messages, diff and round trip."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from vidcls.config import (
    MAX_BATCH_SIZE,
    MAX_MEMBERS,
    RUNTIME_ONLY,
    TrainConfig,
    config_diff,
    config_from_dict,
    dump_yaml,
    load_config,
)
from vidcls.errors import ConfigError
from vidcls.models import build_model, list_models

SPEC_DEFAULTS = dict(
    epochs=150,
    batch_size=48,
    lr=1e-3,
    weight_decay=5e-4,
    grad_clip=1.0,
    t0=20,
    t_mult=2,
    eta_min=1e-6,
    hidden_dim=768,
    layers=4,
    heads=12,
    dropout=0.4,
    gamma=2.0,
    smoothing=0.1,
    patience_cycles=1,
    select="auto",  # val_acc for one class per video (the spec's), val_map for label sets
    seed=42,
    workers=2,
    monitor_interval=1800,
    val_fraction=0.15,
    weight_clip=[0.5, 10.0],
    sampler="weighted",
    alpha="inverse_freq",
    augment=True,
)


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_spec():
    cfg = load_config(None)
    assert isinstance(cfg, TrainConfig)
    for key, value in SPEC_DEFAULTS.items():
        got = getattr(cfg, key)
        assert (
            got == value
            and type(got) is type(value)
            or (isinstance(value, int) and isinstance(got, float) and got == value)
        ), (key, got)
    assert load_config() == TrainConfig()
    # weight_clip must not be shared between instances
    a, b = load_config(), load_config()
    a.weight_clip.append(1.0)
    assert b.weight_clip == [0.5, 10.0]


def test_yaml_overrides_defaults(tmp_path):
    p = write(
        tmp_path,
        "epochs: 10\nlr: 1e-4\ndropout: 0.2\nselect: val_f1_macro\nweight_clip: [1.0, 5.0]\naugment: false\n",
    )
    cfg = load_config(p)
    assert cfg.epochs == 10 and isinstance(cfg.epochs, int)
    # YAML 1.1 reads `1e-4` (no dot) as a string; it must still become the float 1e-4
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.dropout == 0.2 and cfg.select == "val_f1_macro"
    assert cfg.weight_clip == [1.0, 5.0] and cfg.augment is False
    # untouched keys keep their defaults
    assert cfg.batch_size == 48 and cfg.hidden_dim == 768 and cfg.seed == 42


def test_cli_overrides_win_over_yaml(tmp_path):
    p = write(tmp_path, "epochs: 10\nbatch_size: 16\nseed: 3\n")
    cfg = load_config(p, {"batch_size": 8, "seed": None, "lr": 0.01, "epochs": None})
    assert cfg.batch_size == 8  # command line wins
    assert cfg.seed == 3 and cfg.epochs == 10  # None overrides are ignored
    assert cfg.lr == 0.01
    assert load_config(None, {"workers": None}) == TrainConfig()


def test_dashes_in_keys(tmp_path):
    p = write(tmp_path, "batch-size: 8\nweight-decay: 0.01\nmonitor-interval: 60\n")
    cfg = load_config(p)
    assert cfg.batch_size == 8 and cfg.weight_decay == 0.01 and cfg.monitor_interval == 60.0
    assert isinstance(cfg.monitor_interval, float)
    assert load_config(None, {"grad-clip": 2.5}).grad_clip == 2.5


def test_string_values_coerced(tmp_path):
    p = write(tmp_path, "epochs: '12'\nlr: '0.5'\naugment: 'no'\nplots: 'True'\nt0: 12.0\n")
    cfg = load_config(p)
    assert cfg.epochs == 12 and isinstance(cfg.epochs, int)
    assert cfg.lr == 0.5 and cfg.augment is False and cfg.plots is True
    assert cfg.t0 == 12 and isinstance(cfg.t0, int)


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == TrainConfig()
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml")) == TrainConfig()


def test_unknown_key_named_with_file_and_valid_keys(tmp_path):
    p = write(tmp_path, "epochs: 5\nlearning_rate: 0.1\n", "my_run.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert "learning_rate" in msg and "my_run.yaml" in msg
    for valid in ("lr", "batch_size", "weight_clip", "monitor_interval", "select"):
        assert valid in msg
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, {"bogus": 1})


@pytest.mark.parametrize(
    "text,key",
    [
        ('epochs: "ten"\n', "epochs"),
        ("lr: [1]\n", "lr"),
        ("augment: maybe\n", "augment"),
        ("epochs: 10.5\n", "epochs"),
        ("epochs: true\n", "epochs"),
        ("weight_clip: 3\n", "weight_clip"),
        ("model: [a, b]\n", "model"),
        ("dropout: {a: 1}\n", "dropout"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    p = write(tmp_path, text, "typed.yaml")
    with pytest.raises(ConfigError, match=key) as info:
        load_config(p)
    assert "typed.yaml" in str(info.value)


def test_wrong_type_on_command_line():
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, {"batch_size": "many"})


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "epochs: [1, 2\n"))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError):
        load_config(tmp_path)  # a directory is not a config file


@pytest.mark.parametrize(
    "override,option",
    [
        ({"batch_size": 0}, "batch.size"),
        ({"epochs": -1}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"select": "foo"}, "select"),
        ({"sampler": "bar"}, "sampler"),
        ({"alpha": "uniform"}, "alpha"),
        ({"val_fraction": 0}, "val.fraction"),
        ({"val_fraction": 1.0}, "val.fraction"),
        ({"weight_decay": -1e-4}, "weight.decay"),
        ({"workers": -1}, "workers"),
        ({"weight_clip": [10.0, 0.5]}, "weight.clip"),
        ({"weight_clip": [0.0, 1.0]}, "weight.clip"),
        ({"weight_clip": [1.0]}, "weight.clip"),
    ],
)
def test_invalid_values_name_option(override, option):
    with pytest.raises(ConfigError, match=option):
        load_config(None, override)


def test_invalid_value_from_yaml(tmp_path):
    with pytest.raises(ConfigError, match="batch.size"):
        load_config(write(tmp_path, "batch-size: 0\n"))


def test_boundary_values_accepted():
    cfg = load_config(
        None,
        {
            "dropout": 0.0,
            "smoothing": 0.0,
            "weight_decay": 0,
            "workers": 0,
            "patience_cycles": 0,
            "weight_clip": [1.0, 1.0],
            "val_fraction": 0.99,
        },
    )
    assert cfg.dropout == 0.0 and cfg.workers == 0 and cfg.weight_clip == [1.0, 1.0]


@pytest.mark.parametrize("option, bound", [("batch_size", MAX_BATCH_SIZE), ("members", MAX_MEMBERS)])
def test_upper_bounds_of_batch_size_and_members(option, bound):
    """The bound itself is accepted; one more is one ConfigError naming the option and the bound."""
    assert (bound, option) in ((65_536, "batch_size"), (64, "members"))
    assert getattr(load_config(None, {option: bound}), option) == bound
    flag = "--" + option.replace("_", "-")
    for value in (bound + 1, 10 * bound):
        with pytest.raises(ConfigError) as err:
            load_config(None, {option: value})
        assert str(err.value) == f"{flag} must be at most {bound:,}, got {value:,}"
    with pytest.raises(ConfigError, match=f"^{flag} must be at most"):  # a config file is checked alike
        TrainConfig(**{option: bound + 1}).validate()


@pytest.mark.parametrize("flag, value", [("--batch-size", "65537"), ("--members", "65")])
def test_an_option_over_its_bound_is_refused_before_anything_is_written(tmp_path, capsys, flag, value):
    from vidcls.cli import main

    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "feats"), str(run), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be at most" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_config_diff_lists_changes_and_skips_runtime():
    assert set(RUNTIME_ONLY) >= {"epochs", "workers", "device", "monitor_interval", "plots"}
    old = TrainConfig()
    new = dataclasses.replace(
        old, lr=0.01, dropout=0.1, epochs=300, workers=8, device="cpu", monitor_interval=5.0, plots=False
    )
    diff = config_diff(old, new)
    assert len(diff) == 2
    joined = "\n".join(diff)
    assert "lr" in joined and "0.001" in joined and "0.01" in joined
    assert "dropout" in joined and "0.4" in joined and "0.1" in joined
    for runtime in ("epochs", "workers", "device", "monitor_interval", "plots"):
        assert runtime not in joined
    assert config_diff(old, TrainConfig()) == []
    assert config_diff(old, dataclasses.replace(old, epochs=1, workers=0)) == []
    # with nothing ignored the runtime keys show up
    full = config_diff(old, new, ignore=())
    assert len(full) == 7
    assert any(line.startswith("epochs") for line in full)
    # a list-valued option
    wc = config_diff(old, dataclasses.replace(old, weight_clip=[0.5, 5.0]))
    assert len(wc) == 1 and wc[0].startswith("weight_clip")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        dict(
            features_dir="/data/feats",
            epochs=7,
            batch_size=3,
            lr=1.2345678e-4,
            weight_clip=[0.25, 4.0],
            augment=False,
            plots=False,
            select="val_f1_macro",
            sampler="shuffle",
            alpha="none",
            monitor_interval=12.5,
            device="cpu",
            model="transformer",
            eta_min=0.0,
        ),
    ],
)
def test_dump_yaml_round_trip(tmp_path, changes):
    cfg = dataclasses.replace(TrainConfig(), **changes).validate()
    p = write(tmp_path, dump_yaml(cfg), "config.yaml")
    back = load_config(p)
    assert back == cfg
    for f in dataclasses.fields(TrainConfig):
        assert type(getattr(back, f.name)) is type(getattr(cfg, f.name)), f.name
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override", [{"lr": "nan"}, {"lr": float("inf")}, {"weight_decay": float("nan")}])
def test_non_finite_values_rejected(override):
    try:
        load_config(None, override)
    except ConfigError:
        return
    raise AssertionError(f"{override} accepted")


def test_weight_clip_non_numeric_items(tmp_path):
    with pytest.raises(ConfigError, match="weight.clip"):
        load_config(write(tmp_path, "weight_clip: ['0.5', '10']\n"))


def test_negative_seed_rejected():
    with pytest.raises(ConfigError, match="--seed"):
        load_config(None, {"seed": -1})


def test_every_option_has_help_text():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help", "").strip(), f"{f.name} has no help text"


def test_list_options_from_the_command_line_are_typed():
    cfg = load_config(None, {"weight_clip": "0.25, 4", "tta_modes": "reverse,original"})
    assert cfg.weight_clip == [0.25, 4.0] and all(type(v) is float for v in cfg.weight_clip)
    assert cfg.tta_modes == ["reverse", "original"]
    with pytest.raises(ConfigError, match="weight_clip"):
        load_config(None, {"weight_clip": "low,high"})


def test_monitor_interval_must_be_positive():
    with pytest.raises(ConfigError, match="--monitor-interval"):
        load_config(None, {"monitor_interval": 0})
    assert load_config(None, {"monitor_interval": 0.5}).monitor_interval == 0.5


def test_seed_fits_a_signed_64_bit_int_for_every_member():
    assert load_config(None, {"seed": 2**63 - 1}).seed == 2**63 - 1
    assert load_config(None, {"seed": 2**63 - 3, "members": 3}).seed == 2**63 - 3
    for override in ({"seed": 2**63}, {"seed": 2**63 - 2, "members": 3}, {"seed": 2**64}):
        with pytest.raises(ConfigError, match="--seed"):
            load_config(None, override)


ALL_MODES = ("original", "reverse", "speed_up", "speed_down")


@pytest.mark.parametrize(
    "modes", [list(c) for k in range(1, 5) for c in itertools.combinations(ALL_MODES, k)]
)
def test_every_subset_of_tta_modes_is_accepted(modes):
    assert load_config(None, {"tta_modes": ",".join(modes)}).tta_modes == modes


@pytest.mark.parametrize("modes", ["", ",", "reverse,reverse", "original,flip", "Original"])
def test_bad_tta_modes_rejected(modes):
    with pytest.raises(ConfigError, match="--tta-modes"):
        load_config(None, {"tta_modes": modes})


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match="--model") as info:
        load_config(None, {"model": "lstm9000"})
    assert ", ".join(list_models()) in str(info.value)


@pytest.mark.parametrize("name", list_models())
def test_model_size_checks_match_the_models(name):
    """validate() refuses exactly the sizes the model's own constructor refuses."""
    for hidden, layers, heads in itertools.product((2, 3, 4, 6, 9), (1, 2), (1, 2, 3, 4)):
        sizes = dict(hidden_dim=hidden, layers=layers, heads=heads, dropout=0.1)
        try:
            build_model(name, feature_dim=3, n_classes=2, **sizes)
            builds = True
        except ConfigError:
            builds = False
        try:
            load_config(None, {"model": name, **sizes})
            valid = True
        except ConfigError as exc:
            valid = False
            assert "hidden_dim" in str(exc) or "heads" in str(exc), exc
        assert valid == builds, (name, sizes)


def test_auto_model_picks_by_the_width_of_a_frame():
    from vidcls.config import AUTO_MIN_DIM, auto_model

    assert TrainConfig().model == "auto"
    # CNN features (EfficientNetV2-S 1280, ResNet-18 512) get the spec's model; 1-value or 6-value
    # sensor / time-series steps the convolution; the line is at 32 values per step
    assert [auto_model(d) for d in (1280, 512, 32)] == ["bilstm_attn"] * 3
    assert [auto_model(d) for d in (31, 6, 1)] == ["inception_time"] * 3
    assert AUTO_MIN_DIM == 32


def test_auto_model_sizes_must_suit_both_candidates():
    # hidden 18, heads 2: bilstm_attn accepts it (even, divisible by 2), inception_time does not (18 % 4)
    load_config(None, {"model": "bilstm_attn", "hidden_dim": 18, "heads": 2})
    with pytest.raises(ConfigError, match=r"--model auto \(which may pick inception_time\).*hidden_dim"):
        load_config(None, {"hidden_dim": 18, "heads": 2})


def test_a_retired_key_is_refused_in_a_new_config_but_dropped_from_a_saved_run(tmp_path):
    old_run = write(tmp_path, "patience: 25\nlr: 0.002\n", "config.yaml")  # written by an earlier release
    with pytest.raises(ConfigError, match="patience_cycles"):
        load_config(old_run)
    cfg = load_config(old_run, saved_run=True)
    assert cfg.lr == 0.002 and cfg.patience_cycles == 1
    with pytest.raises(ConfigError, match="patience_cycles"):  # never from the command line
        load_config(old_run, {"patience": 3}, saved_run=True)


def test_select_auto_resolves_per_task_and_a_select_of_the_other_task_is_refused():
    from vidcls.config import resolve_select

    assert resolve_select("auto", "single") == "val_acc"
    assert resolve_select("auto", "multilabel") == "val_map"
    assert resolve_select("val_gap", "multilabel") == "val_gap"
    with pytest.raises(ConfigError, match="--select val_map does not apply to --task single"):
        load_config(None, {"task": "single", "select": "val_map"})
    with pytest.raises(ConfigError, match="--threshold must be in"):
        load_config(None, {"threshold": 1.0})
    with pytest.raises(ConfigError, match="--task must be one of"):
        load_config(None, {"task": "multi"})
