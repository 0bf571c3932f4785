"""The upload page in a real headless Chromium (Debian chromium + chromium-driver; `.ci/run` installs
them): a clip uploaded through the page shows the class probabilities and the attention timeline,
and class names and file names are shown as text, never run as markup."""

from __future__ import annotations

import shutil

import pytest

import videos as V
from vidcls.serve import ServeSettings, create_app

XSS_CLASS = "<script>alert(1)</script>"
XSS_FILE = "<img src=x onerror=alert(2)>.mp4"


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def upload(driver, url: str, path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    driver.find_element(By.ID, "file").send_keys(str(path))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 120).until(EC.visibility_of_element_located((By.ID, "result")))


def no_alert(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_page_uploads_a_clip_and_shows_bars_and_timeline(browser, video_run, serve_app, tmp_path):
    from selenium.webdriver.common.by import By

    import vidcls

    predictor = vidcls.load(video_run, device="cpu")
    clip = V.write_clip(tmp_path / "red clip.mp4", V.shapes_frames(24, color=(220, 40, 40), seed=9))
    app = create_app(predictor, ServeSettings(tmp_dir=str(tmp_path), run_dir=str(video_run)))
    with serve_app(app) as url:
        upload(browser, url, clip)
        assert browser.find_element(By.ID, "status").text == "done"
        assert browser.find_element(By.ID, "filename").text == "red clip.mp4"
        assert browser.find_element(By.ID, "label").text in predictor.classes_
        rows = browser.find_elements(By.CSS_SELECTOR, "#bars .bar-row")
        assert sorted(r.find_element(By.CLASS_NAME, "bar-name").text for r in rows) == sorted(
            predictor.classes_
        )
        widths = [r.find_element(By.CLASS_NAME, "bar-fill").value_of_css_property("width") for r in rows]
        assert float(widths[0].rstrip("px")) > 0
        frames = browser.find_elements(By.CSS_SELECTOR, "#timeline .frame")
        assert len(frames) == 4  # the run's extractor takes 4 frames per clip
        imgs = browser.find_elements(By.CSS_SELECTOR, "#timeline .frame img")
        assert len(imgs) == 4 and all(i.get_attribute("src").startswith("data:image/jpeg") for i in imgs)
        assert browser.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 0)")
        assert browser.find_element(By.ID, "verdict").text.startswith(("trusted", "not trusted", "unknown"))
    assert not list(tmp_path.glob("vidcls-upload-*"))


def test_class_and_file_names_are_shown_as_text(browser, fake, serve_app, tmp_path):
    from selenium.webdriver.common.by import By

    clip = V.write_clip(tmp_path / XSS_FILE, V.shapes_frames(20))
    app = create_app(fake(classes=(XSS_CLASS, "plain", "a & b")), ServeSettings(tmp_dir=str(tmp_path)))
    with serve_app(app) as url:
        upload(browser, url, clip)
        assert no_alert(browser)
        names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .bar-name")]
        assert sorted(names) == sorted([XSS_CLASS, "plain", "a & b"])
        assert browser.find_element(By.ID, "filename").text == XSS_FILE
        assert XSS_CLASS in browser.find_element(By.ID, "model").text
        assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # the page's own
        assert not browser.find_elements(By.CSS_SELECTOR, "#result img[src='x']")
        assert (
            browser.execute_script("return document.querySelectorAll('#result script, #model script').length")
            == 0
        )
