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


@pytest.mark.parametrize("content, expected", [
    (b"\x01\x02 not numpy at all" * 10, "is not a valid .npy file"),
    (None, "holds Python objects, not numbers"),
])
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


@pytest.mark.parametrize("command", [["predict", "{d}", "{d}/x.npy"], ["serve", "{d}"]])
def test_a_directory_that_is_no_run_is_not_told_to_evaluate(tmp_path, capsys, command):
    np.save(tmp_path / "x.npy", np.zeros((4, 8), dtype=np.float32))
    assert main([c.format(d=tmp_path) for c in command]) == 2
    err = capsys.readouterr().err
    assert "holds no run (no config.yaml)" in err and "vidcls evaluate" not in err
