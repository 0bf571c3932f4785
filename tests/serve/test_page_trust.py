"""The upload page shows the three trust states (trusted / not trusted / unknown) and every OOD score
against its threshold, in a real headless Chromium (skipped without chromium + chromedriver)."""

from __future__ import annotations

import pytest
from test_page import browser, upload  # noqa: F401 (the browser fixture)

import videos as V
from vidcls.serve import ServeSettings, create_app

CHECKS = {
    "energy": {"score": 2.21, "threshold": 1.5, "pass": True},
    "typicality": {"score": -9.1, "threshold": -4.0, "pass": False},
}
STATES = {
    "untrusted": (
        False,
        "out-of-distribution: typicality score -9.100 is below the validation threshold -4.000",
        CHECKS,
    ),
    "trusted": (
        True,
        "within the validation range",
        {
            "energy": {"score": 3.0, "threshold": 1.5, "pass": True},
            "typicality": {"score": -1.0, "threshold": -4.0, "pass": True},
        },
    ),
    "unknown": (
        None,
        "not calibrated (no calibration.json): the verdict is unknown; run `vidcls calibrate r`",
        None,
    ),
}


@pytest.fixture
def stated(fake):
    class Stated(fake):
        state = "unknown"

        def predict_records(self, x, top_k=3):
            out = super().predict_records(x, top_k)
            trusted, reason, ood = STATES[self.state]
            for r in out:
                r.update(trusted=trusted, trust_reason=reason, ood=ood, ood_score=2.21 if ood else None)
            return out

    return Stated()


@pytest.mark.parametrize("state", ["untrusted", "trusted", "unknown"])
def test_page_shows_the_state_and_both_scores(browser, stated, serve_app, tmp_path, state):  # noqa: F811
    from selenium.webdriver.common.by import By

    stated.state = state
    clip = V.write_clip(tmp_path / "clip.mp4", V.shapes_frames(20))
    with serve_app(create_app(stated, ServeSettings(tmp_dir=str(tmp_path)))) as url:
        upload(browser, url, clip)
        v = browser.find_element(By.ID, "verdict")
        items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#ood li")]
        model = browser.find_element(By.ID, "model").text
    assert v.get_attribute("class") == state
    if state == "untrusted":
        assert v.text.startswith("not trusted: out-of-distribution")
        assert items == [
            "energy score 2.210 (threshold 1.500): pass",
            "typicality score -9.100 (threshold -4.000): FAIL",
        ]
        assert "OOD score" not in v.text  # no single unnamed score any more
    elif state == "trusted":
        assert v.text == "trusted: within the validation range" and len(items) == 2
        assert all(i.endswith(": pass") for i in items)
    else:
        assert v.text.startswith("unknown: not calibrated") and items == []
    assert "not calibrated" in model  # the fake has no calibration: the model line says so
