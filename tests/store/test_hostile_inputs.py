"""Store commands given careless or hostile input: one clear line (exit 2), nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.store import write_store


def test_synth_refuses_a_size_the_disk_cannot_hold_before_allocating(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--videos", "100000000000", "--dim", "100000"]) == 2
    err = capsys.readouterr().err
    assert "GiB free" in err and "--videos" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_synth_never_replaces_features_it_did_not_write(tmp_path, capsys):
    real = tmp_path / "features"
    gen = ((f"v{i}", np.ones((3, 4), np.float32), i % 2) for i in range(4))
    write_store(real / "train.h5", gen, ["a", "b"], 4, {"backbone": "resnet18"})
    before = (real / "train.h5").read_bytes()
    assert main(["synth", str(real), "--videos", "40", "--dim", "4"]) == 2
    assert "vidcls synth did not write" in capsys.readouterr().err
    assert (real / "train.h5").read_bytes() == before and sorted(p.name for p in real.iterdir()) == [
        "train.h5"
    ]
    # a synthetic store may be re-made in place (the demo and the tests do)
    assert main(["synth", str(tmp_path / "s"), "--videos", "40", "--dim", "4"]) == 0
    assert main(["synth", str(tmp_path / "s"), "--videos", "40", "--dim", "4", "--seed", "1"]) == 0


@pytest.mark.parametrize(
    "content, says",
    [
        (b"\xff\xfe\x00garbage\n", "is not UTF-8 text"),
        (b"video_id,label\na\x00b,x\n", "control character"),
    ],
)
def test_import_npy_names_what_is_wrong_with_the_csv(tmp_path, capsys, content, says):
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "labels.csv").write_bytes(content)
    assert (
        main(["import", "npy", str(tmp_path / "npy"), str(tmp_path / "labels.csv"), str(tmp_path / "out")])
        == 2
    )
    err = capsys.readouterr().err
    assert says in err and "labels.csv" in err and len(err.strip().splitlines()) == 1


def test_import_npy_refuses_a_folder_given_as_the_csv(tmp_path, capsys):
    (tmp_path / "npy").mkdir()
    assert main(["import", "npy", str(tmp_path / "npy"), str(tmp_path / "npy"), str(tmp_path / "out")]) == 2
    assert "is not a file" in capsys.readouterr().err
