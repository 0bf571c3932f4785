"""Messages that must send the user the right way (issue 16 item 19): each names the file and a fix
that matches what is actually wrong with it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vidcls.cli import main
from vidcls.features.video import VideoSkip, open_video


def test_a_missing_video_is_not_told_to_fix_permissions(tmp_path):
    with pytest.raises(VideoSkip) as info:
        open_video(tmp_path / "gone.mp4")
    assert "no such file" in str(info.value) and "chmod" not in str(info.value)
    assert str(tmp_path / "gone.mp4") in str(info.value)


def test_a_folder_given_as_a_video_is_not_told_to_fix_permissions(tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(VideoSkip) as info:
        open_video(tmp_path / "clip.mp4")
    assert "is a folder, not a video file" in str(info.value) and "chmod" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_a_file_without_read_permission_is_told_chmod(tmp_path):
    p = tmp_path / "locked.mp4"
    p.write_bytes(b"\0" * 100)
    p.chmod(0)
    with pytest.raises(VideoSkip, match=r"chmod a\+r"):
        open_video(p)


def test_info_describes_a_valid_npy_instead_of_calling_it_damaged(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((12, 7), dtype=np.float32))
    assert main(["info", str(tmp_path / "clip.npy")]) == 0
    out = capsys.readouterr().out
    assert "12x7 (float32)" in out and "vidcls predict RUN_DIR" in out
    assert "delete it" not in out and "damaged" not in out


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x01\x02 not numpy at all" * 10, "is not a valid .npy file"),
        (None, "holds Python objects, not numbers"),
    ],
)
def test_info_on_a_bad_npy_says_what_is_wrong_without_numpy_jargon(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.npy"
    if content is None:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(content)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "allow_pickle" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["predict", "{d}", "{d}/x.npy"], ["serve", "{d}", "--port", "{port}"]])
def test_a_directory_that_is_no_run_is_not_told_to_evaluate(tmp_path, capsys, command):
    import socket

    with socket.socket() as s:  # a port free now: serve checks it can listen before it loads the run
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    np.save(tmp_path / "x.npy", np.zeros((4, 8), dtype=np.float32))
    assert main([c.format(d=tmp_path, port=port) for c in command]) == 2
    err = capsys.readouterr().err
    assert "holds no run (no config.yaml)" in err and "vidcls evaluate" not in err


# ---------------------------------------------------------------- .npy inputs (API and CLI alike)


def _npy_cases(tmp_path, dim: int) -> dict:
    """{name: (path, what the message must say)}: a valid file and the ways one goes wrong."""
    np.save(tmp_path / "ok.npy", np.random.default_rng(0).normal(size=(5, dim)).astype(np.float32))
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(1).bytes(300))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "huge.npy", np.full((5, dim), 1e6, dtype=np.float32))  # over float16
    return {
        "random": (tmp_path / "random.npy", "is not a .npy array file"),
        "objects": (tmp_path / "objects.npy", "holds Python objects, not numbers"),
        "huge": (tmp_path / "huge.npy", "features overflow float16"),
        "missing": (tmp_path / "missing.npy", "no such file"),
    }


def test_the_api_reads_a_npy_path_as_features_like_the_cli(clip_run, tmp_path):
    import vidcls

    run = clip_run[2]
    model = vidcls.load(run, device="cpu")
    cases = _npy_cases(tmp_path, model.feature_dim_)
    expected = model.predict_proba(np.load(tmp_path / "ok.npy"))
    np.testing.assert_allclose(model.predict_proba(str(tmp_path / "ok.npy")), expected, rtol=1e-6)
    records = model.predict_records([str(p) for p, _ in cases.values()])
    for (name, (path, says)), rec in zip(cases.items(), records):
        assert rec["label"] is None and rec["input"] == str(path)
        err = rec["error"]
        assert err.startswith(f"{path}: ") and says in err, (name, err)
        assert "FFmpeg" not in err and "allow_pickle" not in err and "features[" not in err, (name, err)


def test_the_cli_names_the_npy_file_in_every_error(clip_run, tmp_path, capsys):
    import json

    import vidcls

    run = clip_run[2]
    dim = vidcls.load(run, device="cpu").feature_dim_
    cases = _npy_cases(tmp_path, dim)
    paths = [str(p) for p, _ in cases.values() if p.exists()]
    assert main(["predict", str(run), str(tmp_path / "ok.npy"), *paths, "--format", "jsonl"]) == 0
    records = {r["input"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records[str(tmp_path / "ok.npy")]["label"] is not None
    for name, (path, says) in cases.items():
        if not path.exists():
            continue
        err = records[str(path)]["error"]
        assert says in err and str(path) in err and "allow_pickle" not in err and "features[" not in err, (
            name,
            err,
        )


def test_a_weights_file_that_is_no_state_dict_is_named_in_a_few_words(tmp_path):
    from vidcls.errors import BackboneError
    from vidcls.features.weights import read_state_dict

    path = tmp_path / "clip.pth"
    path.write_bytes(b"\x00\x00\x00 ftypisom not torch at all" * 20)
    with pytest.raises(BackboneError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert msg.startswith(f"--weights {path}: not a loadable state dict") and "torch.save" in msg
    assert "In PyTorch 2.6" not in msg and len(msg) < 300


@pytest.mark.parametrize("n", [-1, 65, 100000])
def test_decode_workers_out_of_range_are_refused_before_any_process_starts(tmp_path, capsys, n):
    (tmp_path / "v" / "a").mkdir(parents=True)
    (tmp_path / "v" / "a" / "clip.mp4").write_bytes(b"\0" * 64)
    assert main(["predict", str(tmp_path), str(tmp_path / "v"), "--decode-workers", str(n)]) == 2
    assert main(["extract", str(tmp_path / "v"), str(tmp_path / "f"), "--decode-workers", str(n)]) == 2
    err = capsys.readouterr().err
    assert err.count("--decode-workers must be an integer from 0") == 2 and not (tmp_path / "f").exists()


def test_a_timeline_path_that_is_a_file_is_refused_before_the_run_is_loaded(tmp_path, capsys, monkeypatch):
    import vidcls.predict.predictor as predictor_module

    def must_not_load(*a, **k):
        raise AssertionError("the run was loaded before --timeline was checked")

    monkeypatch.setattr(predictor_module, "load", must_not_load)
    (tmp_path / "config.yaml").write_text("epochs: 1\n")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "notes.txt").write_text("mine")
    assert (
        main(["predict", str(tmp_path), str(tmp_path / "x.npy"), "--timeline", str(tmp_path / "notes.txt")])
        == 2
    )
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
