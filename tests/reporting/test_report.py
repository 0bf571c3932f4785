"""The HTML run report: sections, embedded PNGs, no external references, tables that match the run,
runs without a test split, missing optional files, escaping, and (when chromium exists) rendering."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from vidcls.cli import main
from vidcls.reporting import figures
from vidcls.reporting.report import SECTIONS, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = [
    "config",
    "data",
    "curves",
    "lr",
    "per-class",
    "confusion",
    "ensemble",
    "tta",
    "calibration",
    "resources",
    "misclassified",
]
TINY = (
    "--epochs 3 --model bilstm_attn --min-steps 1 --hidden-dim 8 --layers 1 --heads 2 --workers 0 "
    "--device cpu --no-plots --model mean_mlp"
).split()


class Page(HTMLParser):
    """Collects what the tests check: section text, every attribute, images and table body rows."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.attrs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.imgs: list[str] = []
        self.rows: dict[str, list[str]] = {}  # table id -> class attribute of each <tbody> row
        self._section: list[str] = []
        self._table: list[str | None] = []
        self._in_tbody = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "section":
            self._section.append(a.get("id", ""))
            self.sections.setdefault(a.get("id", ""), "")
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "table":
            self._table.append(a.get("id"))
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody and self._table and self._table[-1]:
            self.rows.setdefault(self._table[-1], []).append(a.get("class") or "")

    def handle_endtag(self, tag):
        if tag == "section" and self._section:
            self._section.pop()
        elif tag == "table" and self._table:
            self._table.pop()
        elif tag == "tbody":
            self._in_tbody = False

    def handle_data(self, data):
        if self._section:
            self.sections[self._section[-1]] += data


def train(feats: Path, run: Path, members: int) -> Path:
    assert main(["train", str(feats), str(run), "--members", str(members), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def feats(small_features) -> Path:
    return small_features


@pytest.fixture(scope="module")
def run(feats, tmp_path_factory) -> Path:
    return train(feats, tmp_path_factory.mktemp("run") / "run", members=2)


@pytest.fixture(scope="module")
def run_no_test(feats, tmp_path_factory) -> Path:
    only = tmp_path_factory.mktemp("no_test")
    for name in ("train.h5", "val.h5"):
        shutil.copy(feats / name, only / name)
    return train(only, tmp_path_factory.mktemp("run_nt") / "run", members=1)


def report(run_dir: Path) -> tuple[Path, str, Page]:
    path = write_report(run_dir)
    text = path.read_text(encoding="utf-8")
    return path, text, Page(text)


def assert_well_formed(text: str, page: Page) -> None:
    assert list(page.sections) == SECTION_IDS
    for sid, body in page.sections.items():
        assert len(body.strip()) > 20, f"section {sid} is empty"
    assert "could not render" not in text  # a section builder raised
    assert "could not be drawn" not in text  # a figure raised
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    for tag, name, value in page.attrs:
        if name in ("src", "href", "action", "poster", "data"):
            assert not value.lower().startswith(("http://", "https://", "//")), (tag, name, value)
    assert "<script" not in text and "<link" not in text and "@import" not in text


def wrong(run_dir: Path, split: str) -> int:
    preds = json.loads((run_dir / f"eval_{split}.json").read_text())["predictions"]
    return sum(1 for p in preds if not p["correct"])


def test_sections_ids_match_module():
    assert [sid for sid, _, _ in SECTIONS] == SECTION_IDS


def test_full_run_report(run):
    path, text, page = report(run)
    assert path == run / "report.html"
    assert_well_formed(text, page)
    # curves, lr, per-class, two confusion heatmaps, resources
    assert len(page.imgs) == 6
    summary = json.loads((run / "summary.json").read_text())
    member_rows = [c for c in page.rows["member-table"] if "member" in c.split()]
    assert len(member_rows) == len(summary["members"]) == 2
    assert len(page.rows.get("misclassified-table", [])) == wrong(run, "test")
    assert len(page.rows["per-class-table"]) == len(summary["classes"])
    assert f"{summary['test']['accuracy']:.3f}" in text  # headline number
    assert "mean of members" in page.sections["ensemble"]
    assert "gain vs mean member" in page.sections["ensemble"]


def test_report_without_test_split(run_no_test):
    _, text, page = report(run_no_test)
    assert_well_formed(text, page)
    assert not (run_no_test / "eval_test.json").exists()
    assert "no test split" in page.sections["misclassified"].lower()
    assert len(page.rows.get("misclassified-table", [])) == wrong(run_no_test, "val")
    assert len([c for c in page.rows["member-table"] if "member" in c.split()]) == 1
    assert "test acc" not in page.sections["ensemble"]  # no empty test columns
    assert "validation (no test split)" in text


def test_missing_optional_files(run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run, partial, ignore=shutil.ignore_patterns("*.pt"))
    shutil.rmtree(partial / "results")
    for name in ("eval_test.json", "eval_val.json"):
        (partial / name).unlink()
    (partial / "members" / "1" / "history.json").unlink()
    _, text, page = report(partial)
    assert_well_formed(text, page)
    assert "not available" in page.sections["misclassified"]
    assert "resource log not available" in page.sections["resources"]


def test_bare_run_dir(tmp_path):
    """Only config.yaml exists (a run killed before its first epoch): every section says so."""
    (tmp_path / "config.yaml").write_text("epochs: 1\n")
    _, text, page = report(tmp_path)
    assert list(page.sections) == SECTION_IDS
    assert page.imgs == []
    assert "epochs" in page.sections["config"]
    for sid in SECTION_IDS[1:]:  # all but the config
        assert "not available" in page.sections[sid], sid


def test_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")


def test_a_directory_that_is_no_run_is_refused_and_left_alone(tmp_path, capsys):
    from vidcls.cli import main
    from vidcls.errors import ConfigError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no run"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no run (no config.yaml)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no report.html, no .lock


@pytest.mark.parametrize(
    "summary",
    [
        "[1, 2]",
        '"text"',
        '{"final": "x"}',
        '{"test": [1], "classes": 5}',
        '{"members": [1, "a"], "wall_seconds": "x", "final": {"source": [1]}}',
    ],
)
def test_a_summary_of_the_wrong_shape_degrades_the_page(run, tmp_path, summary):
    """A hand-edited summary.json of the wrong shape: the report is still written, the header says
    what is wrong with the file, and the sections that need it say "not available" or why not."""
    edited = tmp_path / "edited"
    shutil.copytree(run, edited, ignore=shutil.ignore_patterns("*.pt"))
    (edited / "summary.json").write_text(summary)
    path, text, page = report(edited)
    assert path == edited / "report.html" and list(page.sections) == SECTION_IDS
    assert "epochs" in page.sections["config"]  # what config.yaml says is still there
    if summary.startswith(("[", '"')):  # not an object at all: read as no summary
        assert "unexpected shape" not in text and "not available" in page.sections["per-class"]
    else:
        assert "unexpected shape" in text or "could not render" in text


def test_text_is_escaped(run, tmp_path):
    evil = tmp_path / "evil"
    shutil.copytree(run, evil, ignore=shutil.ignore_patterns("*.pt"))
    summary = json.loads((evil / "summary.json").read_text())
    summary["features_dir"] = "<b>feats</b>"
    (evil / "summary.json").write_text(json.dumps(summary))
    record = json.loads((evil / "eval_test.json").read_text())
    bad = next(p for p in record["predictions"] if not p["correct"])
    bad["video_id"] = '<img src="http://example.com/x.png">'
    (evil / "eval_test.json").write_text(json.dumps(record))
    _, text, page = report(evil)
    assert_well_formed(text, page)
    assert "<b>feats</b>" not in text and "&lt;b&gt;feats&lt;/b&gt;" in text
    assert '<img src="http://' not in text
    assert bad["video_id"] in page.sections["misclassified"]  # shown, as text


SCRIPT_CLASS = "<script>alert(1)</script>"
DOLLAR_CLASS = "$5_to_$10"  # mathtext would read "$5_to_$" as a formula and fail on it
ODD_VIDEO = 'vid"&<>'


def _rename_in_json(path: Path, renames: dict[str, str]) -> None:
    """Replace whole JSON strings (class names are keys and values alike), never substrings."""
    text = path.read_text()
    for old, new in renames.items():
        text = text.replace(json.dumps(old), json.dumps(new))
    path.write_text(text)


def test_user_strings_are_escaped_and_drawn(run, tmp_path):
    """A class named like a script tag, a "$" class, a video id, a path and a config value with
    HTML metacharacters: all shown as text, none as markup; every figure still drawn."""
    odd = tmp_path / 'run"&<>'
    shutil.copytree(run, odd, ignore=shutil.ignore_patterns("*.pt"))
    classes = json.loads((odd / "summary.json").read_text())["classes"]
    renames = {classes[0]: DOLLAR_CLASS, classes[1]: SCRIPT_CLASS}
    for name in ("summary.json", "eval_test.json", "eval_val.json"):
        _rename_in_json(odd / name, renames)
    record = json.loads((odd / "eval_test.json").read_text())
    bad = next(p for p in record["predictions"] if not p["correct"])
    bad["video_id"] = ODD_VIDEO
    (odd / "eval_test.json").write_text(json.dumps(record))
    config = yaml.safe_load((odd / "config.yaml").read_text())
    config["features_dir"] = "/data/<i>it's</i>"
    (odd / "config.yaml").write_text(yaml.safe_dump(config))

    _, text, page = report(odd)
    assert_well_formed(text, page)  # no raw <script, and no section or figure failed
    assert len(page.imgs) == 6  # curves, lr, per-class, two confusion heatmaps, resources
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "vid&#34;&amp;&lt;&gt;" in text and ODD_VIDEO not in text
    assert "run&#34;&amp;&lt;&gt;" in text and 'run"&<>' not in text
    assert "/data/&lt;i&gt;it&#39;s&lt;/i&gt;" in text and "<i>" not in text
    # the parsed page shows each string exactly as it was written
    for sid in ("data", "per-class", "misclassified"):
        assert SCRIPT_CLASS in page.sections[sid] and DOLLAR_CLASS in page.sections[sid], sid
    assert ODD_VIDEO in page.sections["misclassified"]
    assert "/data/<i>it's</i>" in page.sections["config"]


def test_failing_figure_leaves_a_note_and_the_rest(run, tmp_path, monkeypatch, caplog):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.pt"))

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(figures, "per_class_png", broken)
    with caplog.at_level("WARNING", logger="vidcls.reporting.report"):
        path, text, page = report(copy)
    assert path == copy / "report.html"
    assert list(page.sections) == SECTION_IDS
    section = page.sections["per-class"]
    assert "per-class F1: figure could not be drawn (RuntimeError: renderer exploded)" in section
    # the section's table and every other figure are still there
    classes = json.loads((copy / "summary.json").read_text())["classes"]
    assert len(page.rows["per-class-table"]) == len(classes)
    assert len(page.imgs) == 5
    assert "could not render" not in text
    assert [r.getMessage() for r in caplog.records if "per-class F1" in r.getMessage()], caplog.text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_renders_in_headless_chromium(run, tmp_path):
    path = write_report(run)
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,4000",
            path.resolve().as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000
    from PIL import Image  # pillow comes with matplotlib

    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        # a blank or error page has a handful of colours; the report has charts and tables
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200
