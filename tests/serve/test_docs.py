"""``/docs`` in a real headless Chromium (Debian chromium + chromium-driver): Swagger UI renders the
OpenAPI 3.1 that FastAPI writes (Swagger UI 4 could not: "Unable to render this definition"), from
files served by the service itself (no CDN), and without the API key, which only /v1/* needs."""

from __future__ import annotations

import shutil

import httpx
import pytest

from vidcls.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def chromium():
    browser, driver = (
        shutil.which("chromium") or shutil.which("chromium-browser"),
        shutil.which("chromedriver"),
    )
    if not (browser and driver):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
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
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def requested_urls(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_docs_list_the_operations_in_a_browser(chromium, fake, serve_app, api_key):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(fake(), ServeSettings(api_key=api_key))
    with serve_app(app) as url:
        assert httpx.get(url + "/openapi.json").json()["openapi"].startswith("3.1")
        chromium.get(url + "/docs")
        WebDriverWait(chromium, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock") or "Unable to render" in d.page_source
        )
        body = chromium.find_element(By.TAG_NAME, "body").text
        assert "Unable to render" not in body and "Could not render" not in body
        paths = [e.text for e in chromium.find_elements(By.CSS_SELECTOR, ".opblock .opblock-summary-path")]
        assert {"/v1/predict/features", "/v1/predict", "/v1/model", "/health"} <= set(paths), paths
        assert chromium.find_elements(By.CSS_SELECTOR, ".btn.authorize")  # X-API-Key can be entered there
        urls = requested_urls(chromium)
        assert url + "/docs-static/swagger-ui-bundle.js" in urls
        assert [u for u in urls if not u.startswith((url, "data:"))] == []  # all from the service: no CDN
        if api_key:  # the docs need no key; the API still does
            assert httpx.get(url + "/v1/model").status_code == 401
            assert httpx.get(url + "/v1/model", headers={"X-API-Key": api_key}).status_code == 200
