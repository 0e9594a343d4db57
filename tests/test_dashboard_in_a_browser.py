"""The operator's dashboard in a real browser (headless Chromium from Debian's packages, driven by Selenium through
chromium-driver), against the real service started with `python server.py` behind its Envoy."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver import Chrome as WebDriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from bench.servers import ROOT, Server, start_server
from tests.support.database import Template

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")

KEY = "dashboard-admin-key"
# The README's screenshots are written only when asked (`scripts/dev.sh screenshots`): tests never rewrite tracked
# files.
SCREENSHOTS_DIR = os.environ.get("RECOMMENDER_SCREENSHOTS_DIR")
LAPTOP, PHONE = (1366, 900), (390, 844)
SCREENSHOT_SIZES = {"laptop": (1366, 1900), "phone": PHONE}  # the laptop one tall enough to show the preview


@pytest.fixture(scope="module")
def server(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # A few seconds of tuning make a retrain long enough for the page to show its progress.
    # Two versions' files kept: older retired versions lose theirs, and the page must not offer them.
    workdir = tmp_path_factory.mktemp("dashboard")
    running = start_server(
        template.copy(workdir), workdir, API_KEY=KEY, TUNING="auto",
        TUNING_TRIALS="1000", RETRAIN_TRIALS="1000", TUNING_SECONDS="3",
        KEEP_VERSIONS="2",
    )  # fmt: skip
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert CHROMIUM and DRIVER, (
        "the dashboard's tests need Chromium and its driver from Debian's packages (apt-get install chromium "
        "chromium-driver); `scripts/dev.sh test` installs them"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.set_capability("goog:loggingOptions", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    driver.set_window_size(*LAPTOP)
    yield driver
    driver.quit()


def open_page(browser: WebDriver, server: Server, path: str = "/") -> list[dict[str, object]]:
    """Loads the page; returns what the console logged while it loaded, and empties it for the test."""
    browser.get(server.url + path)
    wait(browser, lambda: "loading" not in text(browser, "active") and rows(browser))
    return list(browser.get_log("browser"))


def wait(browser: WebDriver, condition: object, timeout: float = 30) -> None:
    WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _driver: condition())  # type: ignore[operator]


def text(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def rows(browser: WebDriver) -> list[WebElement]:
    return list(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr"))


def active_version(server: Server) -> str:
    version: str = httpx.get(f"{server.url}/api/v1/model/info", timeout=10).json()["version"]
    return version


def console_errors(browser: WebDriver, *, network: bool = False) -> list[str]:
    """Errors in the browser's console: script errors, and with `network` failed loads too (Chromium logs every
    4xx answer as one, including those a test provokes on purpose)."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and (network or entry.get("source") != "network")
    ]


def set_key(browser: WebDriver, key: str) -> None:
    field = browser.find_element(By.ID, "admin-key")
    field.clear()
    if key:
        field.send_keys(key)


def test_the_page_shows_the_active_version_and_every_version_without_console_errors(
    browser: WebDriver, server: Server
) -> None:
    for path in ("/", "/dashboard/"):
        assert open_page(browser, server, path) == []  # not one console entry, a /favicon.ico 404 included
        version = active_version(server)
        assert version in text(browser, "active")
        assert "users" in text(browser, "active") and "Parameters" in text(browser, "active")
        table = rows(browser)
        assert len(table) == len(httpx.get(f"{server.url}/api/v1/models").json()["models"])
        assert "active" in table[0].text and version in table[0].text
        assert browser.find_elements(By.CSS_SELECTOR, "#chart svg circle")
        assert text(browser, "health") == "ok"
    browser.implicitly_wait(0)
    browser.execute_script("return new Promise((done) => setTimeout(done, 2500))")  # a polling round or two
    assert browser.get_log("browser") == []
    assert "adminKey" not in browser.current_url and browser.execute_script("return localStorage.length") == 0


def test_retrain_asks_for_the_key_then_shows_progress_and_the_new_version(browser: WebDriver, server: Server) -> None:
    open_page(browser, server)
    before = len(rows(browser))
    set_key(browser, "")
    browser.find_element(By.ID, "retrain").click()
    wait(browser, lambda: "admin key is missing" in text(browser, "messages"))
    set_key(browser, "not-the-key")
    browser.find_element(By.ID, "retrain").click()
    wait(browser, lambda: "admin key was not accepted" in text(browser, "messages"))
    set_key(browser, KEY)
    browser.find_element(By.ID, "retrain").click()
    wait(browser, lambda: browser.find_element(By.ID, "retrain-progress").is_displayed())
    assert "Retraining:" in text(browser, "retrain-progress")
    wait(browser, lambda: len(rows(browser)) == before + 1, timeout=90)
    wait(browser, lambda: not browser.find_element(By.ID, "retrain-progress").is_displayed())
    assert "Before" in text(browser, "last") and "After" in text(browser, "last")
    assert console_errors(browser) == []


def retrain_and_wait(browser: WebDriver, server: Server) -> None:
    before = len(httpx.get(f"{server.url}/api/v1/models").json()["models"])
    httpx.post(f"{server.url}/api/v1/retrain", json={"force": True}, headers={"x-api-key": KEY}).raise_for_status()
    wait(browser, lambda: len(rows(browser)) == before + 1, timeout=90)
    wait(browser, lambda: text(browser, "health") == "ok", timeout=90)


def test_roll_back_is_offered_for_kept_versions_only_and_asks_first(browser: WebDriver, server: Server) -> None:
    open_page(browser, server)
    while len(httpx.get(f"{server.url}/api/v1/models").json()["models"]) < 4:  # with two kept, some are pruned
        retrain_and_wait(browser, server)
    models = httpx.get(f"{server.url}/api/v1/models").json()["models"]
    kept = [m["version"] for m in models if m["status"] == "retired" and m["artifact_available"]]
    pruned = [m["version"] for m in models if m["status"] == "retired" and not m["artifact_available"]]
    assert kept and pruned
    wait(browser, lambda: len(rows(browser)) == len(models))
    buttons = browser.find_elements(By.CSS_SELECTOR, "#versions button[data-version]")
    assert [b.get_attribute("data-version") for b in buttons] == kept
    for row in rows(browser):
        if any(version in row.text for version in pruned):
            assert "files pruned" in row.text

    target, before = kept[0], active_version(server)
    set_key(browser, KEY)
    buttons[0].click()
    alert = browser.switch_to.alert
    assert target in alert.text
    alert.dismiss()  # changed their mind: nothing happens
    assert active_version(server) == before
    buttons[0].click()
    browser.switch_to.alert.accept()
    wait(browser, lambda: f"Now serving {target}" in text(browser, "messages"))
    assert active_version(server) == target
    wait(browser, lambda: any("active" in row.text and target in row.text for row in rows(browser)))
    assert target in text(browser, "active")
    assert console_errors(browser) == []


def test_the_preview_lists_recommendations_and_similar_books(browser: WebDriver, server: Server) -> None:
    open_page(browser, server)
    field = browser.find_element(By.ID, "user-id")
    field.clear()
    field.send_keys("3")
    field.submit()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)
    reads = browser.find_elements(By.CSS_SELECTOR, "#reads li")
    assert reads and "Nothing yet" not in reads[0].text
    expected = httpx.get(f"{server.url}/api/v1/recommendations?user_id=3&limit=10").json()["recommendations"]
    shown = browser.find_elements(By.CSS_SELECTOR, "#recommendations li button.book")
    assert [b.text for b in shown] == [r["title"] for r in expected]
    assert browser.find_elements(By.CSS_SELECTOR, "#recommendations .bar span")
    reasons = browser.find_elements(By.CSS_SELECTOR, "#recommendations .because")
    first_reason = expected[0]["because"][0]
    if first_reason.get("text"):  # what the reader's book signals say ("more by ...", "next in ...") comes first
        assert reasons and reasons[0].text.lower() == first_reason["text"].lower()
    else:
        assert reasons and reasons[0].text.startswith("Because you read ") and first_reason["title"] in reasons[0].text
    shown[0].click()
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#similar li")) == 10)
    assert expected[0]["title"] in text(browser, "similar-title")
    similar = httpx.get(f"{server.url}/api/v1/books/{expected[0]['book_id']}/similar?limit=10").json()["books"]
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#similar li button.book")] == [
        b["title"] for b in similar
    ]
    field.clear()
    field.send_keys("0")
    browser.find_element(By.CSS_SELECTOR, "#preview-form button").click()
    assert console_errors(browser) == []


def start_a_canary(browser: WebDriver, server: Server) -> str:
    """A kept retired version as a canary for half the readers, with some traffic and clicks on both versions."""

    def kept() -> list[str]:
        models = httpx.get(f"{server.url}/api/v1/models").json()["models"]
        return [m["version"] for m in models if m["status"] == "retired" and m["artifact_available"]]

    while not kept():
        retrain_and_wait(browser, server)
    version = kept()[0]
    admin = {"x-api-key": KEY}
    started = httpx.post(f"{server.url}/api/v1/model/canary", json={"version": version, "share": 0.5}, headers=admin)
    started.raise_for_status()
    events = []
    for user in range(1, 61):
        answer = httpx.get(f"{server.url}/api/v1/recommendations?user_id={user}&limit=5").json()
        if user % 3 == 0:
            book = answer["recommendations"][user % 5]["book_id"]
            events.append({"recommendation_id": answer["recommendation_id"], "book_id": book, "event": "click"})
    httpx.post(f"{server.url}/api/v1/feedback", json={"events": events}, headers=admin).raise_for_status()
    return version


def test_a_running_canary_shows_its_online_numbers_and_can_be_aborted(browser: WebDriver, server: Server) -> None:
    open_page(browser, server)
    version = start_a_canary(browser, server)
    open_page(browser, server)  # the online chart is drawn at load, then every 10 s
    wait(browser, lambda: version in text(browser, "canary") and "Since it started" in text(browser, "canary"))
    assert "50% of readers" in text(browser, "canary") and "Test:" in text(browser, "canary")
    wait(browser, lambda: any("canary (50%)" in row.text for row in rows(browser)))
    wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#online-chart polyline")) >= 2)
    assert version in text(browser, "online-chart")  # the legend names every version with impressions
    set_key(browser, KEY)
    browser.find_element(By.ID, "canary-abort").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda: f"Canary {version} aborted" in text(browser, "messages"))
    wait(browser, lambda: not browser.find_element(By.ID, "canary-section").is_displayed())
    status = {m["version"]: m["status"] for m in httpx.get(f"{server.url}/api/v1/models").json()["models"]}
    assert status[version] == "rejected"
    assert console_errors(browser) == []


def test_api_errors_appear_in_the_page(browser: WebDriver, server: Server) -> None:
    open_page(browser, server)
    browser.execute_script("showSimilar({book_id: 77777777, title: 'nothing'})")
    wait(browser, lambda: "not in the catalogue" in text(browser, "messages"))


def test_screenshots_at_laptop_and_phone_widths(browser: WebDriver, server: Server, tmp_path: Path) -> None:
    folder = Path(SCREENSHOTS_DIR) if SCREENSHOTS_DIR else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    open_page(browser, server)
    start_a_canary(browser, server)  # the README shows a running canary
    try:
        for name, size in SCREENSHOT_SIZES.items():
            browser.set_window_size(*size)
            open_page(browser, server)
            field = browser.find_element(By.ID, "user-id")
            field.clear()
            field.send_keys("1")
            field.submit()
            wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#recommendations li"))
            wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#online-chart polyline"))
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= size[0], f"the page is wider than the {name} screen"
            browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
            path = folder / f"dashboard-{name}.png"
            browser.save_screenshot(str(path))
            assert path.stat().st_size > 10_000
    finally:
        browser.set_window_size(*LAPTOP)
        httpx.post(f"{server.url}/api/v1/model/canary/abort", json={}, headers={"x-api-key": KEY})


def test_the_page_is_one_self_contained_file() -> None:
    page = (ROOT / "gateway" / "dashboard.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "localStorage" not in page and "sessionStorage" not in page and "document.cookie" not in page
    assert Path(ROOT / "gateway" / "envoy.yaml").read_text().count("dashboard.html") == 1
