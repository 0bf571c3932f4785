"""report.html and the epoch dashboard of a multi-label run, on hand-made run directories: the
sections and their numbers, the caps at 10,000 classes (size and time), the thresholds and
co-occurrence, and summaries / histories of the wrong shape (a page that says "not available")."""

from __future__ import annotations

import base64
import io
import json
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from matplotlib.axes import Axes

from vidcls.reporting import plots
from vidcls.reporting.plots import save_epoch_plots
from vidcls.reporting.report import MULTILABEL_SECTIONS, SECTIONS, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ML_IDS = [
    "config",
    "data",
    "curves",
    "lr",
    "metrics",
    "per-class",
    "cooccurrence",
    "thresholds",
    "ensemble",
    "tta",
    "calibration",
    "resources",
    "misclassified",
]
MINE = ("data", "metrics", "per-class", "cooccurrence", "thresholds", "misclassified", "calibration")
CLASSES = ["outdoor", "dog", "music", "cat", "rain"]
# hand-made metrics: rain has no positive video (AP None), the rest in no particular order of AP
VAL = {
    "n": 40,
    "gap_at_20": 0.8123,
    "map_macro": 0.7342,
    "f1_micro": 0.6612,
    "f1_macro": 0.5934,
    "hit_at_1": 0.8751,
    "exact_set_accuracy": 0.4251,
    "ap_per_class": {"outdoor": 0.8213, "dog": 0.9104, "music": 0.4611, "cat": 0.7441, "rain": None},
    "f1_per_class": {"outdoor": 0.71, "dog": 0.8, "music": 0.3, "cat": 0.6, "rain": 0.0},
    "support_per_class": {"outdoor": 30, "dog": 20, "music": 15, "cat": 5, "rain": 0},
    "label_cardinality": 1.85,
    "predicted_cardinality": 1.6,
    "cooccurrence": {
        "classes": ["outdoor", "dog", "music", "cat"],
        "counts": [[30, 12, 8, 3], [12, 20, 2, 0], [8, 2, 15, 1], [3, 0, 1, 5]],
    },
}
TEST = {
    **VAL,
    "n": 36,
    "gap_at_20": 0.7888,
    "map_macro": 0.7011,
    "f1_micro": 0.6401,
    "f1_macro": 0.5702,
    "hit_at_1": 0.8611,
    "exact_set_accuracy": 0.3889,
    "label_cardinality": 1.9167,
    "predicted_cardinality": 1.7222,
}
THRESHOLDS = {
    "rule": "per_class",
    "global": 0.35,
    "per_class": [0.3, 0.4, 0.45, 0.25, 0.35],
    "support": [30, 20, 15, 5, 0],
}
BRIEF = ("map_macro", "gap_at_20", "f1_micro", "exact_set_accuracy")


class Page(HTMLParser):
    """Section text, images, and each table's body rows as lists of cell texts."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.imgs: dict[str, list[str]] = {}  # section id -> image sources
        self.tables: dict[str, list[list[str]]] = {}
        self._section = ""
        self._table: str | None = None
        self._in_tbody = False
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id", "")
            self.sections.setdefault(self._section, "")
        elif tag == "img":
            self.imgs.setdefault(self._section, []).append(a.get("src", ""))
        elif tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table or "", [])
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self.tables[self._table or ""].append([])
        elif tag == "td" and self._in_tbody:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = ""
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "td" and self._cell is not None:
            self.tables[self._table or ""][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section] += data
        if self._cell is not None:
            self._cell.append(data)


def ml_history(n_epochs: int, n_classes: int) -> list[dict]:
    """A multi-label member's rows as training.loop._multilabel_row writes them; best mAP at epoch 2."""
    return [
        {
            "epoch": e,
            "lr": 1e-3 / e,
            "train_loss": 1.0 / e,
            "train_hit_at_1": 0.5 + 0.05 * e,
            "val_loss": 1.2 / e,
            "val_map": [0.4, 0.7, 0.6, 0.5][(e - 1) % 4],
            "val_gap": 0.5 + 0.04 * e,
            "val_hit_at_1": 0.6 + 0.03 * e,
            "val_f1_micro": 0.3 + 0.05 * e,
            "val_f1_macro": 0.2 + 0.05 * e,
            "val_exact_set_accuracy": 0.1 + 0.05 * e,
            "epoch_seconds": 2.0,
            "val_ap_per_class": [
                None if c % 5 == 4 else ((c * 37 + e) % 100) / 100 for c in range(n_classes)
            ],
        }
        for e in range(1, n_epochs + 1)
    ]


def predictions(n_wrong: int, n_right: int = 3) -> list[dict]:
    wrong = [
        {
            "video_id": f"w{i:04d}",
            "label": "outdoor|dog",
            "pred": "" if i == 0 else "dog",
            "confidence": 0.5 + 0.4 * i / max(n_wrong, 1),
            "correct": False,
            "hit_at_1": i % 2 == 0,
        }
        for i in range(n_wrong)
    ]
    right = [
        {
            "video_id": f"r{i}",
            "label": "cat",
            "pred": "cat",
            "confidence": 0.9,
            "correct": True,
            "hit_at_1": True,
        }
        for i in range(n_right)
    ]
    return wrong + right


def summary_of(classes: list[str], val: dict, test: dict | None, thresholds: dict) -> dict:
    counts = {n: (i * 3) % 7 + 1 for i, n in enumerate(classes)}
    return {
        "vidcls_version": "test",
        "task": "multilabel",
        "classes": classes,
        "model": "mean_mlp",
        "features_dir": "/feats",
        "val_source": "val.h5",
        "class_counts": {"train": counts, "val": counts, "test": counts if test else None},
        "members": [
            {
                "member": 0,
                "best_epoch": 2,
                "checkpoint": "members/0/checkpoints/best.pt",
                "val": {k: val[k] for k in BRIEF},
                **({"test": {k: test[k] for k in BRIEF}} if test else {}),
            }
        ],
        "final": {
            "source": "member 0",
            "members": [0],
            "tta_used": False,
            "task": "multilabel",
            "thresholds": thresholds,
        },
        "val": val,
        "test": test,
        "wall_seconds": 60.0,
    }


def make_run(
    root: Path, summary: dict | str, *, history: list | None = None, preds: list | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("task: multilabel\nmodel: mean_mlp\nepochs: 4\n")
    (root / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    if history is not None:
        (root / "members" / "0").mkdir(parents=True)
        (root / "members" / "0" / "history.json").write_text(json.dumps(history))
    if preds is not None:
        (root / "eval_test.json").write_text(
            json.dumps({"split": "test", "task": "multilabel", "predictions": preds})
        )
    return root


def render(run_dir: Path) -> tuple[str, Page]:
    text = write_report(run_dir).read_text(encoding="utf-8")
    return text, Page(text)


@pytest.fixture
def small_run(tmp_path) -> Path:
    return make_run(
        tmp_path / "run",
        summary_of(CLASSES, VAL, TEST, THRESHOLDS),
        history=ml_history(4, len(CLASSES)),
        preds=predictions(4),
    )


def assert_png(src: str) -> None:
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1])
    assert png.startswith(PNG_MAGIC)
    assert float(mpimg.imread(io.BytesIO(png), format="png")[..., :3].std()) > 0.05  # not blank


def test_section_lists():
    assert [sid for sid, _, _ in MULTILABEL_SECTIONS] == ML_IDS
    assert "confusion" not in ML_IDS and "confusion" in [sid for sid, _, _ in SECTIONS]


def test_headline_numbers_for_val_and_test(small_run):
    text, page = render(small_run)
    assert list(page.sections) == ML_IDS
    assert "could not render" not in text and "could not be drawn" not in text
    rows = {r[0]: r[1:] for r in page.tables["ml-metrics-table"]}
    assert rows["videos"] == ["40", "36"]
    assert rows["mAP (macro, over classes with a positive video)"] == ["0.734", "0.701"]
    assert rows["GAP@20"] == ["0.812", "0.789"]
    assert rows["F1 micro (at the run's thresholds)"] == ["0.661", "0.640"]
    assert rows["F1 macro (at the run's thresholds)"] == ["0.593", "0.570"]
    assert rows["hit@1 (top class in the true set)"] == ["0.875", "0.861"]
    assert rows["exact-set accuracy (at the run's thresholds)"] == ["0.425", "0.389"]
    assert rows["labels per video: true"] == ["1.850", "1.917"]
    assert rows["labels per video: predicted"] == ["1.600", "1.722"]
    assert "rule: per_class" in page.sections["metrics"]
    # the header's cards: the test mAP, GAP@20 and micro F1
    head = text.split("<section", 1)[0]
    for value, name in (("0.701", "mAP"), ("0.789", "GAP@20"), ("0.640", "micro F1")):
        assert f'<div class="v">{value}</div><div class="k">{name}</div>' in head
    assert "multi-label" in head
    assert "Confusion" not in text and "confusion" not in page.sections


def test_ap_chart_and_table_best_first(small_run):
    _, page = render(small_run)
    rows = page.tables["ap-table"]
    assert [r[:2] for r in rows] == [
        ["dog", "0.910"],
        ["outdoor", "0.821"],
        ["cat", "0.744"],
        ["music", "0.461"],
    ]
    assert [r[3] for r in rows] == ["20", "30", "5", "15"]  # support
    assert "1 class without a positive video" in page.sections["per-class"]
    assert len(page.imgs["per-class"]) == 1
    assert_png(page.imgs["per-class"][0])


def test_cooccurrence_and_thresholds(small_run):
    _, page = render(small_run)
    assert len(page.imgs["cooccurrence"]) == 1
    assert_png(page.imgs["cooccurrence"][0])
    assert "the 4 most frequent classes" in page.sections["cooccurrence"]
    rows = page.tables["thresholds-table"]
    # lowest threshold first, with each class's validation support
    expected = [("cat", "0.250", "5"), ("outdoor", "0.300", "30"), ("rain", "0.350", "0")]
    expected += [("dog", "0.400", "20"), ("music", "0.450", "15")]
    assert rows == [list(r) for r in expected]
    sec = page.sections["thresholds"]
    assert "Global threshold 0.350" in sec and "from 0.250 to 0.450 (median 0.350)" in sec
    assert "per class: the grid threshold" in sec


def test_calibrated_thresholds_get_a_column(small_run):
    cal = {
        "temperature": 1.5,
        "ece_before": 0.1,
        "ece_after": 0.05,
        "ood": {"score": "energy", "threshold": 1.0, "val_pass_rate": 0.95},
        "task": "multilabel",
        "thresholds": {"rule": "per_class", "global": 0.3, "per_class": [0.2, 0.3, 0.4, 0.15, 0.3]},
    }
    (small_run / "calibration.json").write_text(json.dumps(cal))
    _, page = render(small_run)
    rows = page.tables["thresholds-table"]
    assert rows[0] == ["cat", "0.250", "5", "0.150"] and rows[-1] == ["music", "0.450", "15", "0.400"]
    assert "before the sigmoid" in page.sections["calibration"]
    assert "chosen again on the calibrated validation" in page.sections["calibration"]


def test_wrong_label_sets(small_run):
    _, page = render(small_run)
    rows = page.tables["misclassified-table"]
    assert [r[1] for r in rows] == ["w0003", "w0002", "w0001", "w0000"]  # most confident first
    assert rows[-1][2:5] == ["outdoor|dog", "(none)", "yes"]  # the empty predicted set
    assert rows[0][4] == "no"
    assert "4 of 7 test videos" in page.sections["misclassified"]


def test_data_counts_videos_per_label(small_run):
    _, page = render(small_run)
    rows = page.tables["data-table"]
    # counts (i * 3) % 7 + 1: outdoor 1, dog 4, music 7, cat 3, rain 6; most frequent in train first
    assert [r[0] for r in rows] == ["music", "rain", "dog", "cat", "outdoor", "labels in total"]
    assert rows[-1] == ["labels in total", "21", "21", "21"]


def test_no_test_split_uses_validation(tmp_path):
    run = make_run(tmp_path / "run", summary_of(CLASSES, VAL, None, THRESHOLDS))
    text, page = render(run)
    assert [len(r) for r in page.tables["ml-metrics-table"]] == [2] * 9  # no test column
    assert "no test split" in page.sections["metrics"]
    assert "on validation (no test split)" in page.sections["per-class"]
    assert '<div class="v">0.734</div><div class="k">mAP</div>' in text


def _big_summary(n: int) -> dict:
    """n classes "c00000".. listed in a scrambled order; AP c / n (None for c % 1000 == 500); thresholds
    0.95 - 0.9 c / n: the best APs are the last classes, the lowest thresholds too."""
    classes = [f"c{(i * 7919) % n:05d}" for i in range(n)]
    value = {c: int(c[1:]) for c in classes}
    ap = {c: None if value[c] % 1000 == 500 else value[c] / n for c in classes}
    metrics = {
        **VAL,
        "ap_per_class": ap,
        "f1_per_class": {c: 0.5 for c in classes},
        "support_per_class": {c: 3 for c in classes},
        "cooccurrence": {
            "classes": classes[:20],
            "counts": [[5 if r == c else 1 for c in range(20)] for r in range(20)],
        },
    }
    thresholds = {
        "rule": "per_class",
        "global": 0.5,
        "per_class": [0.95 - 0.9 * value[c] / n for c in classes],
        "support": [3] * n,
    }
    return summary_of(classes, metrics, {**metrics, "n": 36}, thresholds)


def test_ten_thousand_classes_are_capped_small_and_fast(tmp_path):
    n = 10_000
    run = make_run(tmp_path / "big", _big_summary(n), history=ml_history(3, n), preds=predictions(500))
    t0 = time.perf_counter()
    text, page = render(run)
    seconds = time.perf_counter() - t0
    size = len(text.encode("utf-8"))
    print(f"10,000 classes: report in {seconds:.2f} s, {size / 1e6:.2f} MB")
    assert seconds < 10.0 and size < 2_000_000
    assert "could not render" not in text and "could not be drawn" not in text
    ap_rows = page.tables["ap-table"]
    assert len(ap_rows) == 41
    assert [r[0] for r in ap_rows[:20]] == [f"c{v:05d}" for v in range(9999, 9979, -1)]
    assert ap_rows[20][0] == "... 9,950 classes left out ..."  # 9,990 with an AP, 40 shown
    assert [r[0] for r in ap_rows[21:]] == [f"c{v:05d}" for v in range(19, -1, -1)]
    assert "10 classes without a positive video" in page.sections["per-class"]
    th_rows = page.tables["thresholds-table"]
    assert len(th_rows) == 41 and th_rows[20][0] == "... 9,960 classes left out ..."
    assert [r[0] for r in th_rows[:3]] == ["c09999", "c09998", "c09997"] and th_rows[-1][0] == "c00000"
    assert th_rows[0][1] == "0.050" and th_rows[-1][1] == "0.950"
    assert len(page.tables["data-table"]) == 42  # 20 + left out + 20 + total
    assert len(page.tables["misclassified-table"]) == 200
    assert "300 left out" in page.sections["misclassified"]


@pytest.mark.parametrize(
    "summary",
    [
        '{"task": "multilabel"}',
        '{"task": "multilabel", "val": [1], "test": "x", "final": {"thresholds": {"per_class": "x"}}, '
        '"classes": 5}',
        '{"task": "multilabel", "classes": ["a", "b"], "test": {"map_macro": "high", "n": true, '
        '"ap_per_class": {"a": "x", "b": NaN}, '
        '"cooccurrence": {"classes": ["a", "b"], "counts": [[1], [2, 3]]}}, '
        '"final": {"thresholds": {"per_class": [0.5, null], "support": "x"}}, '
        '"class_counts": {"train": [1]}}',
        '{"task": "multilabel", "classes": ["a", "b"], "test": {"ap_per_class": [1, 2], "cooccurrence": '
        '{"classes": ["a", "b"], "counts": [[1, -2], [Infinity, 3]]}}, '
        '"final": {"thresholds": {"per_class": [0.5]}}}',
        '{"task": "multilabel", "classes": ["a"], "test": {"ap_per_class": {"a": 0.5}, "cooccurrence": '
        '{"classes": "ab", "counts": 3}}, "final": [], "class_counts": {"train": {"a": "many"}}}',
    ],
)
def test_a_hostile_summary_degrades_to_not_available(tmp_path, summary):
    run = make_run(
        tmp_path / "run", summary, history=[{"epoch": 1, "val_map": "x", "val_ap_per_class": ["x", None]}]
    )
    text, page = render(run)
    assert list(page.sections) == ML_IDS
    for sid in MINE:
        assert "could not render" not in page.sections[sid], (sid, page.sections[sid])
    for sid in ("metrics", "cooccurrence", "thresholds"):
        body = page.sections[sid]
        assert "not available" in body or "-" in body, (sid, body)
    assert "not available" in page.sections["cooccurrence"]
    assert "not available" in page.sections["thresholds"]


def test_escaped_names_and_dollar_names_are_drawn(tmp_path):
    names = ["<script>alert(1)</script>", "$5_to_$10", "plain"]
    co = {"classes": names, "counts": [[3, 1, 0], [1, 2, 1], [0, 1, 4]]}
    val = {**VAL, "ap_per_class": {n: 0.2 + 0.3 * i for i, n in enumerate(names)}, "cooccurrence": co}
    th = {"rule": "global", "global": 0.4, "per_class": [0.4, 0.4, 0.4], "support": [3, 2, 4]}
    run = make_run(tmp_path / "run", summary_of(names, val, val, th), history=ml_history(2, 3))
    text, page = render(run)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "could not be drawn" not in text and "could not render" not in text
    for sid in ("per-class", "cooccurrence", "curves"):
        assert len(page.imgs.get(sid, [])) == 1, sid
    assert names[0] in page.sections["thresholds"] and names[1] in page.sections["per-class"]
    assert "global: the one threshold" in page.sections["thresholds"]


def test_a_run_still_training_is_read_as_multilabel_from_its_history(tmp_path):
    """No summary.json yet: config.yaml's task and the mAP rows of the history decide the page."""
    run = tmp_path / "run"
    make_run(run, "{}", history=ml_history(3, 4))
    (run / "summary.json").unlink()
    text, page = render(run)
    assert list(page.sections) == ML_IDS
    assert len(page.imgs["curves"]) == 1 and "could not be drawn" not in text
    for sid in ("metrics", "per-class", "cooccurrence", "thresholds", "misclassified"):
        assert "not available" in page.sections[sid], sid


# --- the epoch dashboard ---------------------------------------------------------------------------


def test_dashboard_of_a_multilabel_history(tmp_path):
    names = [f"class_{i}" for i in range(5)]
    path = save_epoch_plots(ml_history(4, 5), names, tmp_path / "plots")
    assert path == tmp_path / "plots" / "epoch_004.png"
    img = mpimg.imread(path)
    assert img.shape[:2] == (640, 1200) and float(img[..., :3].std()) > 0.05
    assert (tmp_path / "plots" / "current.png").read_bytes() == path.read_bytes()


def test_dashboard_with_ten_thousand_classes_shows_the_30_lowest(tmp_path, monkeypatch):
    n = 10_000
    history = ml_history(3, n)
    shown = plots._ap_shown(plots._ap_values(history[-1]))
    latest = history[-1]["val_ap_per_class"]
    # APs ((c * 37 + 3) % 100) / 100 with every 5th class None: 0.00 first (c = 19, 119, ...)
    assert len(shown) == 30 and all(latest[i] is not None for i in shown)
    assert [latest[i] for i in shown] == sorted(latest[i] for i in shown) and latest[shown[-1]] <= 0.01
    titles: list[str] = []
    original = Axes.set_title

    def set_title(self, label, *args, **kwargs):
        titles.append(label)
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", set_title)
    t0 = time.perf_counter()
    save_epoch_plots(history, [f"c{i}" for i in range(n)], tmp_path / "plots")
    assert time.perf_counter() - t0 < 5.0
    ap_title = next(t for t in titles if t.startswith("Per-class val AP"))
    assert "the 30 lowest of 10000 classes" in ap_title
    assert "2000 of 10000 classes: no validation video" in ap_title


def test_dashboard_survives_missing_aps_and_checks_lengths(tmp_path):
    history = ml_history(2, 3)
    for row in history:
        row["val_ap_per_class"] = [None, None, None]  # no validation video carries any class
    save_epoch_plots(history, ["a", "b", "c"], tmp_path / "none")
    with pytest.raises(ValueError, match="val_ap_per_class has 3 values for 2 class names"):
        save_epoch_plots(history, ["a", "b"], tmp_path / "bad")


def test_a_long_label_set_is_cut_in_its_table_cell():
    from vidcls.reporting.multilabel import _set_cell

    assert (
        _set_cell("|".join(f"c{i}" for i in range(15)))
        == "|".join(f"c{i}" for i in range(12)) + " ... (+3 more)"
    )
    assert _set_cell("a|b") == "a|b" and _set_cell("") == "(none)" and _set_cell(None) == "(none)"
