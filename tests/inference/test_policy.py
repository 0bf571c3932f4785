"""Seed ensembles, test-time augmentation and the choices made on validation data."""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import torch

from vidcls.cli import main
from vidcls.inference.policy import collapsed_members, combine, decide_tta
from vidcls.inference.tta import predict_modes, tta_batch, tta_indices
from vidcls.models import build_model
from vidcls.store import write_store
from vidcls.store.synth import make_synthetic
from vidcls.training.checkpoint import load_checkpoint, save_checkpoint
from vidcls.training.data import collate

NAMES = ["a", "b", "c"]


# ---------------------------------------------------------------- TTA index maths

@pytest.mark.parametrize("n,mode,want", [
    (4, "original", [0, 1, 2, 3]),
    (4, "reverse", [3, 2, 1, 0]),
    (12, "speed_up", [0, 2, 4, 6, 8, 11]),       # linspace(0, 11, 6) = 0, 2.2, 4.4, 6.6, 8.8, 11
    (11, "speed_up", [0, 2, 5, 7, 10]),           # linspace(0, 10, 5) = 0, 2.5, 5, 7.5, 10
    (10, "speed_up", list(range(10))),            # only when > 10 frames
    (6, "speed_down", [0, 0, 1, 1, 2, 3, 3, 4, 5]),  # linspace(0, 5, 9) = 0, .625, 1.25, ... 5
    (5, "speed_down", [0, 1, 2, 3, 4]),           # only when > 5 frames
    (1, "reverse", [0]),
])
def test_tta_indices_by_hand(n, mode, want):
    assert tta_indices(n, mode).tolist() == want


def test_tta_indices_rejects_unknown_mode():
    with pytest.raises(ValueError, match="valid modes: original, reverse, speed_up, speed_down"):
        tta_indices(5, "mirror")


def test_tta_batch_applies_each_row_its_own_view():
    a = torch.arange(12.0)[:, None].repeat(1, 2)  # frame t holds value t
    b = torch.arange(4.0)[:, None].repeat(1, 2) + 100
    x, lengths, _, _ = collate([(a, 0, 0), (b, 1, 1)])
    xs, ls = tta_batch(x, lengths, "speed_up")
    assert ls.tolist() == [6, 4] and xs.shape == (2, 6, 2)
    assert xs[0, :, 0].tolist() == [0, 2, 4, 6, 8, 11]
    assert xs[1, :4, 0].tolist() == [100, 101, 102, 103] and xs[1, 4:].abs().sum() == 0
    xr, lr = tta_batch(x, lengths, "reverse")
    assert lr.tolist() == [12, 4]
    assert xr[1, :4, 0].tolist() == [103, 102, 101, 100] and xr[1, 4:].abs().sum() == 0


def test_predict_modes_matches_one_video_at_a_time():
    torch.manual_seed(0)
    model = build_model("bilstm_attn", feature_dim=3, n_classes=3, hidden_dim=8, layers=1, heads=2).eval()
    vids = [torch.randn(n, 3) for n in (13, 7, 4)]
    loader = [collate([(v, i % 3, i) for i, v in enumerate(vids)])]
    out = predict_modes(model, loader, torch.device("cpu"))
    for i, v in enumerate(vids):
        for mode in ("original", "reverse", "speed_up", "speed_down"):
            view = v[tta_indices(len(v), mode)]
            want = torch.softmax(model(view[None], torch.tensor([len(view)])), 1)[0].detach().numpy()
            np.testing.assert_allclose(out[mode][i], want, atol=1e-6)


# ---------------------------------------------------------------- choices on validation

def onehot(pred, n_classes=3, conf=0.8):
    p = np.full((len(pred), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def member(val_pred, test_pred, val_labels, test_labels, tta_val_pred=None):
    views = lambda pred, tta: {"original": onehot(pred), "reverse": onehot(tta if tta is not None else pred),
                               "speed_up": onehot(pred), "speed_down": onehot(pred)}
    return {"val": {**views(val_pred, tta_val_pred), "labels": np.array(val_labels)},
            "test": {**views(test_pred, None), "labels": np.array(test_labels)}}


def test_ensemble_is_the_mean_softmax_of_the_used_members_and_collapse_is_excluded():
    yv, yt = [0, 1, 2, 0, 1, 2], [0, 1, 2, 2]
    good1 = member([0, 1, 2, 0, 1, 1], [0, 1, 2, 1], yv, yt)
    good2 = member([0, 1, 2, 0, 2, 2], [0, 1, 1, 2], yv, yt)
    collapsed = member([0] * 6, [0] * 4, yv, yt)
    res = combine([good1, good2, collapsed], ["val", "test"], NAMES, "val_acc", tta="off")
    assert res["ensemble"]["members_used"] == [0, 1]
    (ex,) = res["ensemble"]["excluded"]
    assert ex["member"] == 2 and "single class" in ex["reason"]
    want = (good1["test"]["original"] + good2["test"]["original"]) / 2
    np.testing.assert_allclose(res["predictions"]["test"], want)
    # by hand: videos 0, 1 agree and are right; videos 2 and 3 (both class c) average a (c .8, b .1)
    # vote with a (b .8, c .1) vote -> a b/c tie, broken to the lower index (b): wrong
    assert res["ensemble"]["test"]["accuracy"] == pytest.approx(2 / 4)
    assert res["members"][2]["test"]["accuracy"] == pytest.approx(1 / 4)


def test_collapse_rules():
    def m(acc, cm):
        return {"accuracy": acc, "f1_macro": acc, "confusion_matrix": cm}

    good = m(0.9, [[9, 1, 0], [0, 10, 0], [1, 0, 9]])
    ok = m(0.85, [[8, 2, 0], [1, 9, 0], [1, 0, 9]])
    ok2 = m(0.88, [[9, 1, 0], [1, 9, 0], [1, 0, 9]])
    far_below = m(0.70, [[7, 3, 0], [3, 7, 0], [0, 3, 7]])   # median of the five is 0.85: 0.15 under
    chance = m(0.34, [[4, 3, 3], [3, 3, 4], [3, 4, 3]])     # balanced accuracy 1/3
    out = collapsed_members([good, ok, ok2, far_below, chance], "val_acc")
    reasons = {e["member"]: e["reason"] for e in out}
    assert set(reasons) == {3, 4}
    assert "below the members' median 0.850" in reasons[3] and "chance" in reasons[4]
    # within the margin stays in: 0.78 is 0.07 under the median 0.85
    near = m(0.78, [[8, 2, 0], [2, 8, 0], [1, 2, 7]])
    assert collapsed_members([good, ok, ok2, near], "val_acc") == []
    assert collapsed_members([chance], "val_acc") == []  # a lone member is never excluded


def test_tta_auto_uses_tta_only_when_validation_improves():
    better, worse = {"accuracy": 0.8, "f1_macro": 0.7}, {"accuracy": 0.7, "f1_macro": 0.75}
    assert decide_tta(worse, better, "val_acc", "auto") is True
    assert decide_tta(better, worse, "val_acc", "auto") is False
    assert decide_tta(better, worse, "val_f1_macro", "auto") is True
    assert decide_tta(better, better, "val_acc", "auto") is False  # no gain, no TTA
    assert decide_tta(better, worse, "val_acc", "on") is True
    yv = [0, 1, 2, 0, 1, 2]
    # the reverse view fixes member 0's val mistakes: averaging the four views flips video 5 to class 2
    m0 = member([0, 1, 2, 0, 1, 1], [0, 1, 2], yv, [0, 1, 2], tta_val_pred=[0, 1, 2, 0, 1, 2])
    res = combine([m0], ["val", "test"], NAMES, "val_acc", tta="auto")
    assert res["members"][0]["tta_used"] is False  # 3 of 4 views still say class 1 for video 5
    assert res["final"]["source"] == "ensemble"


# ---------------------------------------------------------------- whole runs

@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    make_synthetic(out, videos=80, dim=16, min_frames=6, max_frames=24, seed=4)
    return out


@pytest.fixture(scope="module")
def easy_feats(tmp_path_factory):
    """Classes told apart by their mean frame: every member learns them in a few epochs."""
    out = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.0, (4, 16))
    for split, n in (("train", 64), ("val", 24), ("test", 24)):
        vids = [(f"{split}{i}", (centres[i % 4] + rng.normal(0, 0.5, (int(rng.integers(6, 20)), 16))).astype(np.float32),
                 i % 4) for i in range(n)]
        write_store(out / f"{split}.h5", vids, ["animation", "gaming", "natural", "flat"], 16)
    return out


def test_three_members_record_and_forced_collapse(easy_feats, tmp_path, capsys, tiny_args):
    run = tmp_path / "run"
    feats = easy_feats
    assert main(["train", str(feats), str(run), "--epochs", "12", "--lr", "0.01", "--members", "3", "--no-plots",
                 *tiny_args]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert [m["seed"] for m in s["members"]] == [42, 43, 44]
    for key in ("members_used", "excluded", "val", "test", "gain_vs_mean_member"):
        assert key in s["ensemble"]
    assert set(s["tta"]["per_mode"]) == {"original", "reverse", "speed_up", "speed_down"}
    assert s["mean_member_test"]["accuracy"] == pytest.approx(np.mean([m["test"]["accuracy"] for m in s["members"]]))
    rows = (run / "metrics_all.csv").read_text().splitlines()
    assert rows[0].startswith("member,epoch,") and len(rows) == 1 + 3 * 12
    assert s["ensemble"]["excluded"] == [] and all(m["val"]["accuracy"] > 0.8 for m in s["members"])
    tags = [r.get("tag") for r in json.loads((run / "results/resource_utilization_log.json").read_text())]
    assert "member 1 start" in tags and "member 2 end" in tags

    # force member 1 to collapse: a huge bias on class 0 of its classifier
    path = run / "members/1/checkpoints/best.pt"
    ckpt = load_checkpoint(path)
    last_bias = [k for k in ckpt["model_state"] if k.endswith("bias")][-1]
    ckpt["model_state"][last_bias][:] = torch.tensor([1e4, 0, 0, 0])
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "member 1 excluded" in out
    ev = json.loads((run / "eval_test.json").read_text())
    assert 1 not in ev["ensemble"]["members_used"]
    assert any(e["member"] == 1 and "single class" in e["reason"] for e in ev["ensemble"]["excluded"])
    assert len(ev["members"]) == 3 and {"with_tta", "without_tta"} <= set(ev["members"][0])
    assert len(ev["predictions"]) == sum(s["class_counts"]["test"].values())
    for key in ("precision_per_class", "recall_per_class", "support_per_class", "confusion_matrix"):
        assert key in ev["ensemble"]["metrics"]


def test_resume_in_the_middle_of_member_2_of_3(feats, tmp_path, tiny_args, spawn_cli, summary_core):
    common = ["--epochs", "4", "--members", "3", "--patience", "0", "--no-plots", *tiny_args]
    ref = tmp_path / "ref"
    assert main(["train", str(feats), str(ref), *common]) == 0
    run = tmp_path / "killed"
    proc = spawn_cli("train", feats, run, *common)
    hist = run / "members/1/history.json"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if len(json.loads(hist.read_text())) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "members/2").exists() or not (run / "members/2/history.json").exists()
    assert main(["train", str(feats), str(run), "--resume"]) == 0
    assert summary_core(run) == summary_core(ref)
    assert (run / "metrics_all.csv").read_text().count("\n") == (ref / "metrics_all.csv").read_text().count("\n")
