"""The upload page with a window (headless Chromium, as test_page.py): the spans of the record as
coloured bands (one colour per class of the run, as ``vidcls predict --timeline`` colours them, a
legend) and over each frame of the timeline the colour of the span it is in."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from test_page import browser  # noqa: F401 (the browser fixture)

import vidcls
import videos as V
from conftest import two_colours
from vidcls.predict import bands
from vidcls.serve import ServeSettings, create_app


def _rgb(hex_color: str) -> str:
    return "rgba({}, {}, {}, 1)".format(*(int(hex_color[i : i + 2], 16) for i in (1, 3, 5)))


def test_the_pages_palette_is_the_timelines():
    js = (resources.files("vidcls.serve") / "static" / "page.js").read_text()
    listed = re.search(r"const PALETTE = \[(.*?)\];", js, re.S)
    assert listed is not None
    assert tuple(re.findall(r'"(#[0-9a-f]{6})"', listed.group(1))) == bands.PALETTE


def _classify(driver, url: str, path, window: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "segments").send_keys(window)
    driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 120).until(EC.visibility_of_element_located((By.ID, "result")))
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "status").text != "uploading and classifying ..."
    )


def test_the_page_shows_spans_as_bands(browser, rate_run, serve_app, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    predictor = vidcls.load(rate_run, device="cpu")
    clip = V.write_clip(tmp_path / "two colours.mp4", two_colours(40), fps=10)
    want = predictor.predict_segments(str(clip), "1s")[0]
    colors = {c: bands.PALETTE[i] for i, c in enumerate(predictor.classes_)}
    (tmp_path / "up").mkdir()
    app = create_app(predictor, ServeSettings(tmp_dir=str(tmp_path / "up"), run_dir=str(rate_run)))
    with serve_app(app) as url:
        _classify(browser, url, clip, "1s")
        assert browser.find_element(By.ID, "status").text == "done"
        assert browser.find_element(By.ID, "spans-box").is_displayed()
        assert browser.find_element(By.ID, "spans-note").text == (
            f"9 windows of 1 s (5 frames) every 0.4 s; {len(want['spans'])} spans"
        )
        lane = browser.find_element(By.CSS_SELECTOR, "#span-lanes .lane")
        width = lane.size["width"]
        shown = browser.find_elements(By.CSS_SELECTOR, "#span-lanes .lane .span")
        assert [s.get_attribute("data-label") for s in shown] == [s["label"] for s in want["spans"]]
        for el, span in zip(shown, want["spans"]):  # placed at its frames out of 20, in its class's colour
            assert el.value_of_css_property("background-color") == _rgb(colors[span["label"]])
            left = el.location["x"] - lane.location["x"]
            assert left == pytest.approx(width * span["start_frame"] / 20, abs=1.5)
            assert el.size["width"] == pytest.approx(
                width * (span["end_frame"] - span["start_frame"]) / 20, abs=1.5
            )
        legend = browser.find_elements(By.CSS_SELECTOR, "#span-legend li")
        present = [c for c in predictor.classes_ if c in {s["label"] for s in want["spans"]}]
        assert [li.text for li in legend] == present
        assert [
            li.find_element(By.CLASS_NAME, "swatch").value_of_css_property("background-color")
            for li in legend
        ] == [_rgb(colors[c]) for c in present]
        # over every frame of the timeline: the span its index is in
        cells = browser.find_elements(By.CSS_SELECTOR, "#timeline .frame")
        assert len(cells) == len(want["frames"])
        for cell, f in zip(cells, want["frames"]):
            band = cell.find_element(By.CLASS_NAME, "frame-band")
            (span,) = [s for s in want["spans"] if s["start_frame"] <= f["index"] < s["end_frame"]]
            assert band.value_of_css_property("background-color") == _rgb(colors[span["label"]])
        assert browser.find_element(By.ID, "span-end").text == "4.0 s"
        browser.save_screenshot(str(tmp_path / "segments.png"))
        # the next upload without a window: no bands
        browser.find_element(By.ID, "segments").clear()
        browser.find_element(By.ID, "submit").click()
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 60).until(lambda d: not d.find_element(By.ID, "spans-box").is_displayed())
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "status").text == "done")
        assert not browser.find_elements(By.CSS_SELECTOR, "#timeline .frame-band")


def test_a_bad_window_is_shown_as_the_servers_line(browser, rate_run, serve_app, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    predictor = vidcls.load(rate_run, device="cpu")
    clip = V.write_clip(tmp_path / "c.mp4", two_colours(20), fps=10)
    with serve_app(create_app(predictor, ServeSettings(tmp_dir=str(tmp_path)))) as url:
        browser.get(url + "/")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "segments").send_keys("0")
        browser.find_element(By.ID, "file").send_keys(str(clip))
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 60).until(lambda d: "error" in d.find_element(By.ID, "status").text)
        status = browser.find_element(By.ID, "status")
        assert status.text.startswith("error 422: segments must be a positive length")
        assert status.get_attribute("class") == "error"


class _MultiLabelWindows:
    """A multi-label predictor's record with overlapping spans (walk 0-12, jump 8-20 of 20 frames)."""

    fps_, window_ = 5.0, (1.0, "s")

    def __init__(self, fake):
        self.base = fake(classes=("walk", "run", "<b>jump</b>"))
        self.classes_ = self.base.classes_

    def __getattr__(self, name):
        return getattr(self.base, name)

    def predict_segments(self, x, window=None, stride=None, *, top_k=3):
        rec = self.base.predict_records(x, top_k=top_k)[0]
        spans = [("walk", 0, 12, 0.8), ("<b>jump</b>", 8, 20, 0.7)]
        rec.update(
            task="multilabel",
            labels=[{"label": "walk", "probability": 0.6}],
            thresholds_source="default",
            window={"frames": 5, "stride_frames": 2, "seconds": 1.0, "stride_s": 0.4, "source": "option"},
            segments=[{"start_frame": 15, "end_frame": 20, "start_s": 3.0, "end_s": 4.0}],
            spans=[
                {
                    "label": c,
                    "start_frame": a,
                    "end_frame": b,
                    "start_s": a / 5,
                    "end_s": b / 5,
                    "probability": p,
                }
                for c, a, b, p in spans
            ],
        )
        for j, f in enumerate(rec["frames"]):  # the fake's frames, spread over the 20
            f["index"] = j * 2
        return [rec]


def test_multilabel_spans_get_a_lane_per_class(browser, fake, serve_app, clip, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    app = create_app(_MultiLabelWindows(fake), ServeSettings(tmp_dir=str(tmp_path)))
    with serve_app(app) as url:
        _classify(browser, url, clip, "1s")
        assert browser.find_element(By.ID, "status").text == "done"
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#span-lanes .lane-name")]
        assert names == ["walk", "<b>jump</b>"]  # the classes present, in the run's order, as text
        lanes = browser.find_elements(By.CSS_SELECTOR, "#span-lanes .lane")
        assert [lane.get_attribute("data-lane") for lane in lanes] == names
        for lane, (a, b, color) in zip(lanes, [(0, 12, bands.PALETTE[0]), (8, 20, bands.PALETTE[2])]):
            (span,) = lane.find_elements(By.CLASS_NAME, "span")
            assert span.value_of_css_property("background-color") == _rgb(color)
            x = span.location["x"] - lane.location["x"]
            assert x == pytest.approx(lane.size["width"] * a / 20, abs=1.5)
            assert span.size["width"] == pytest.approx(lane.size["width"] * (b - a) / 20, abs=1.5)
        # frames 0, 2, ..., 18: two bands each, walk's coloured below 12, jump's from 8 on
        for cell in browser.find_elements(By.CSS_SELECTOR, "#timeline .frame"):
            walk, jump = cell.find_elements(By.CLASS_NAME, "frame-band")
            index = int(cell.find_element(By.TAG_NAME, "img").get_attribute("alt").split()[-1])
            assert (walk.get_attribute("data-label") == "walk") == (index < 12)
            assert (jump.get_attribute("data-label") == "<b>jump</b>") == (index >= 8)
        assert not browser.find_elements(By.CSS_SELECTOR, "#result b")
        browser.save_screenshot(str(tmp_path / "multilabel.png"))
