"""`vidcls train` given careless input: one clear line (exit 2), before anything is written."""

from __future__ import annotations

import shutil

import pytest

from vidcls.cli import main
from vidcls.config import read_yaml
from vidcls.errors import ConfigError


@pytest.mark.parametrize(
    "text, says",
    [
        ("epochs: 1\nlr: 0.01\nepochs: 2\n", "key 'epochs' is given twice (line 3)"),
        (":\n  - ][\n", "is not valid YAML: expected <block end>, but found ':' at line 1, column 1"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_problem(tmp_path, text, says):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_config_that_is_not_utf8_or_not_a_file(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"\xff\xfeepochs: 1")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_yaml(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_yaml("/dev/null")
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    assert read_yaml(_write(tmp_path / "ok.yaml", "epochs: 3\nlr: 0.01\n")) == {"epochs": 3, "lr": 0.01}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("spelling", ["{f}", "{f}/../{name}"])
def test_the_features_directory_is_refused_as_run_dir(tiny_features, tmp_path, capsys, spelling):
    feats = tmp_path / "feats"
    shutil.copytree(tiny_features, feats)
    before = sorted(p.name for p in feats.iterdir())
    run = spelling.format(f=feats, name=feats.name)
    assert main(["train", str(feats), run, "--epochs", "1"]) == 2
    assert "is a feature directory" in capsys.readouterr().err
    assert sorted(p.name for p in feats.iterdir()) == before  # no config.yaml, no lock, no members/
