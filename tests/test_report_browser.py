"""The HTML report in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which `.ci/run` installs when missing), driven by Selenium, opens the page
from a file URL and finds every chart drawn (its SVG laid out, with marks in it), no console
error, no request but the page itself, and no page wider than a phone; a screenshot is saved
(its path is listed at the end of the test run) and the page is scanned for patient values.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import report_data
from typer.testing import CliRunner

from conftest import SAMPLE_PATIENT_VALUES, keep_output
from followupd.cli import app
from followupd.store import Store

pytestmark = pytest.mark.slow  # a browser's start and three loads: 5-15 s

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "Chromium and its driver are not installed (apt-get install chromium "
        "chromium-driver; .ci/run does it)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

PHONE, DESKTOP = (390, 844), (800, 1200)
CHARTS = ("referrals-by-source", "acknowledgement-times", "visits-and-referrals")


@pytest.fixture
def page(home, tmp_path, monkeypatch) -> Path:
    """The report of the hand-computed fixture (made-up names only), written by the CLI."""
    store = Store(f"sqlite:///{home / 'followupd.sqlite3'}")
    report_data.fill(store.engine)
    store.close()
    path = tmp_path / "report.html"
    result = CliRunner().invoke(
        app, ["--home", str(home), "report", "--since", "2025-07-01", "--html", str(path)]
    )
    keep_output(home.parent, result.stdout, result.stderr)
    assert result.exit_code == 0, result.stderr
    return path


@pytest.fixture
def browser(monkeypatch):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def network(driver) -> tuple[list[str], dict[str, str]]:
    """Since the last look (DevTools' Network domain): every URL the page asked for, and
    {URL: why the browser blocked it} for those it refused to fetch."""
    urls, ids, blocked = [], {}, {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
            ids[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[ids.get(params["requestId"], "?")] = params["blockedReason"]
    return urls, blocked


def requests_made(driver) -> list[str]:
    return network(driver)[0]


def test_the_report_in_a_real_browser(page, browser, tmp_path, record_property):
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    # Every chart drawn: its SVG laid out, with marks (bars, lines, dots) of a real size.
    drawn = browser.execute_script(
        """return [...document.querySelectorAll('figure svg')].map(svg => ({
               id: svg.id,
               width: svg.getBoundingClientRect().width,
               marks: [...svg.querySelectorAll('.series rect, .series path, .series circle')]
                   .filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; })
                   .length}))"""
    )
    assert [chart["id"] for chart in drawn] == [f"chart-{name}" for name in CHARTS]
    for chart in drawn:
        assert chart["width"] > 300 and chart["marks"] > 0, chart
    # Nothing fetched but the page itself, and nothing the console complains of (a Content
    # Security Policy violation, a missing resource, a script error).
    assert requests_made(browser) == [page.as_uri()]
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    # The page as a phone shows it: nothing wider than the screen (tables scroll inside).
    browser.set_window_size(*PHONE)
    browser.get(page.as_uri())
    width = browser.execute_script("return document.documentElement.scrollWidth")
    inner = browser.execute_script("return window.innerWidth")
    assert width <= inner, (width, inner)
    shot_phone = tmp_path / "report-phone.png"
    browser.save_screenshot(str(shot_phone))
    # The whole page on a desktop, for the note.
    browser.set_window_size(*DESKTOP)
    browser.get(page.as_uri())
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(DESKTOP[0], min(height, 12000))
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000 and shot_phone.stat().st_size > 10_000
    record_property("artifact", f"report screenshot: {shot} (phone: {shot_phone})")
    assert requests_made(browser) == [page.as_uri()] * 2
    # What the browser shows holds no patient value.
    shown = browser.page_source + browser.execute_script("return document.body.innerText")
    assert "Dr. Ann Lee" in shown
    for value in SAMPLE_PATIENT_VALUES:
        assert value not in shown, value


def test_the_browser_is_told_to_fetch_nothing(page, browser, tmp_path):
    """The page's Content-Security-Policy: an image slipped into the page would not load."""
    tampered = tmp_path / "tampered.html"
    text = page.read_text(encoding="utf-8")
    tampered.write_text(text.replace("</main>", '<img src="http://127.0.0.1:9/x.png"></main>'))
    os.chmod(tampered, 0o600)
    browser.get(tampered.as_uri())
    asked, blocked = network(browser)
    assert asked == [tampered.as_uri(), "http://127.0.0.1:9/x.png"]
    assert blocked == {"http://127.0.0.1:9/x.png": "csp"}
    assert any("Content Security Policy" in e["message"] for e in browser.get_log("browser"))
