"""The web console in a real browser: Debian's chromium, headless, driven by Selenium
through chromium-driver, against the real daemon of tests/test_api_server.py (simulated
DL/T645 meters behind a TCP bus).

One daemon and one browser for the module; the tests run in order: a bad token refused
and a login, finding a meter and seeing its curve, a trip with its dry run and
confirmation and the verified outcome and audit line shown live, then a viewer with no
command button whose forged POST is refused (403) and audited.  Without chromium the
tests fail, never skip: the README's test set-up installs it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_api_server import TOKENS, Running, audit_rows, start

from collector.store.records import Reading, utcnow

pytestmark = pytest.mark.asyncio(loop_scope="module")
T = TypeVar("T")
ZONE = ZoneInfo("Asia/Shanghai")  # [daily] tz's default: the console's local day
CURVE_POINTS = 24
FCP = """const e = performance.getEntriesByName('first-contentful-paint');
         return e.length ? e[0].startTime : null;"""


def chrome() -> WebDriver:
    """Headless chromium through chromium-driver (the Debian packages; nothing fetched)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("chromium and chromium-driver are needed (apt-get install chromium "
                    "chromium-driver)")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    b = chrome()
    b.implicitly_wait(0)
    try:
        yield b
    finally:
        b.quit()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async for r in start(tmp_path_factory.mktemp("console")):
        # a load curve of M1 for today: one point an hour, timestamped by the meter
        midnight = dt.datetime.combine(dt.datetime.now(ZONE).date(), dt.time(), ZONE)
        r.daemon.writer.put_many([  # type: ignore[union-attr]
            Reading("M1", "active_power", 0.5 + (i % 12) / 10, "kW", utcnow(),
                    meter_ts=(midnight + dt.timedelta(hours=i)).astimezone(dt.UTC))
            for i in range(CURVE_POINTS)])
        await r.daemon.writer.flush()  # type: ignore[union-attr]
        yield r


async def b(fn: Callable[..., T], *args: Any) -> T:
    """A Selenium call off the loop: the daemon serving the browser runs on it."""
    return await asyncio.to_thread(fn, *args)


async def wait_for(browser: WebDriver, cond: Callable[[WebDriver], Any],
                   timeout: float = 10.0) -> Any:
    return await b(WebDriverWait(browser, timeout, poll_frequency=0.05).until, cond)


def text(browser: WebDriver, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


async def login(browser: WebDriver, run: Running, token: str) -> None:
    await b(browser.get, run.url + "/console/login")
    field = await b(browser.find_element, By.ID, "token")
    await b(field.send_keys, token)
    await b(browser.find_element(By.ID, "login-button").click)


async def test_login_refused_then_accepted(browser: WebDriver, run: Running) -> None:
    await b(browser.get, run.url + "/console/")
    assert browser.current_url.startswith(run.url + "/console/login?next=")
    await login(browser, run, "amic_not-a-valid-token")
    await wait_for(browser, lambda d: d.find_elements(By.ID, "login-error"))
    assert text(browser, "#login-error") == "This token is not valid."
    await login(browser, run, TOKENS["operator"])
    await wait_for(browser, lambda d: d.find_elements(By.ID, "buses"))
    assert browser.current_url == run.url + "/console/"
    assert text(browser, "#who") == "operator-1 (operator)"
    assert "conc-1 tcp 3 alive" in text(browser, "#buses")
    cookie = browser.get_cookie("amic_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKENS["operator"] not in json.dumps(browser.get_cookies())


async def test_find_a_meter_and_see_its_curve(browser: WebDriver, run: Running) -> None:
    await b(browser.find_element(By.LINK_TEXT, "Meters").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "search"))
    await b(browser.find_element(By.ID, "q").send_keys, "000000000001")
    await b(browser.find_element(By.ID, "search-button").click)
    await wait_for(browser, lambda d: "q=000000000001" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#meters tr")
    assert len(rows) == 2 and "M1" in rows[1].text and "张*" in rows[1].text
    await b(browser.find_element(By.LINK_TEXT, "M1").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "curve"))
    svg = browser.find_element(By.ID, "curve")
    assert svg.get_attribute("data-quantity") == "active_power"
    assert len(svg.find_elements(By.CSS_SELECTOR, "circle.point")) == CURVE_POINTS
    line = svg.find_element(By.CSS_SELECTOR, "polyline").get_attribute("points") or ""
    xy = [tuple(map(float, p.split(","))) for p in line.split()]
    assert len(xy) == CURVE_POINTS and xy == sorted(xy)  # left to right, hour by hour
    # the highest value (1.6 kW at 11:00 and 23:00) is drawn highest (smallest y)
    assert min(xy, key=lambda p: p[1]) == xy[11]
    titles = [t.get_attribute("textContent") for t in
              svg.find_elements(By.CSS_SELECTOR, "circle.point title")]
    assert titles[11] == "11:00 1.6 kW"
    assert "voltage_a" in text(browser, "#readings")  # the last readings of the poll
    assert text(browser, "#customer") == "张*"


async def test_trip_with_dry_run_confirmation_outcome_and_audit(browser: WebDriver,
                                                                run: Running) -> None:
    assert not run.models["M1"].relay_open
    await b(browser.find_element(By.ID, "do-trip").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "command-form"))
    await b(browser.find_element(By.ID, "reason").send_keys, "arrears, ticket 9001")
    await b(browser.find_element(By.ID, "dry-run").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "confirm"))
    assert "dry_run" in text(browser, "#dry-results")
    assert "closed" in text(browser, "#dry-results")  # the relay as read now
    assert not run.models["M1"].relay_open  # a dry run sends nothing
    t0 = time.monotonic()
    await b(browser.find_element(By.ID, "confirm").click)
    await wait_for(browser, lambda d: "M1 confirmed" in text(d, "#outcome-state"))
    await wait_for(browser, lambda d: "trip M1 confirmed by alice" in text(d, "#audit-lines"))
    print(f"\ntrip confirmed and its audit line shown {time.monotonic() - t0:.2f} s after "
          "the confirm click")
    assert run.models["M1"].relay_open
    assert "arrears, ticket 9001" in text(browser, "#audit-lines")
    await b(browser.find_element(By.LINK_TEXT, "Audit trail").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "audit"))
    newest = browser.find_elements(By.CSS_SELECTOR, "#audit tr")[1].text
    assert "M1 trip confirmed alice arrears, ticket 9001" in newest
    await b(browser.get, run.url + "/console/meters/M1")
    assert text(browser, "#relay").startswith("open (tripped)")


async def test_viewer_has_no_command_and_a_forged_post_is_refused(browser: WebDriver,
                                                                  run: Running) -> None:
    await b(browser.find_element(By.ID, "logout").click)
    await wait_for(browser, lambda d: d.find_elements(By.ID, "token"))
    await login(browser, run, TOKENS["viewer"])
    await wait_for(browser, lambda d: d.find_elements(By.ID, "buses"))
    await b(browser.get, run.url + "/console/meters/M2")
    assert text(browser, "#meter-id") == "M2"
    assert not browser.find_elements(By.ID, "actions")
    assert not browser.find_elements(By.ID, "nav-command")
    # a forged POST with the viewer's own session and CSRF token (from the logout form)
    status = await b(browser.execute_async_script, """
        const done = arguments[arguments.length - 1];
        const csrf = document.querySelector('input[name=csrf]').value;
        fetch('/console/command/confirm', {method: 'POST', body: new URLSearchParams(
            {csrf: csrf, meter: 'M2', action: 'trip', reason: 'forged',
             request_id: 'console-forged-1'})}).then(r => done(r.status));
    """)
    assert status == 403
    assert not run.models["M2"].relay_open
    await run.daemon.writer.flush()  # type: ignore[union-attr]
    rows = [r for r in audit_rows(run) if r["status"] == "denied"]
    assert [(r["kind"], r["meter"], r["operator"], json.loads(r["detail"])["http"])
            for r in rows] == [("api POST /console/login", "", "", 401),  # the bad token
                               ("trip", "M2", "viewer-1", 403)]
    await b(browser.get, run.url + "/console/audit")
    newest = browser.find_elements(By.CSS_SELECTOR, "#audit tr")[1].text
    assert "M2 trip denied viewer-1 role viewer may not do this (needs operator)" in newest


async def test_first_paint_is_measured(browser: WebDriver, run: Running,
                                       tmp_path: Path) -> None:
    import os
    if os.environ.get("AMIC_CONSOLE_SHOTS"):  # pictures of the pages, to look at them
        shots = Path(os.environ["AMIC_CONSOLE_SHOTS"])
        for name, path in (("meter", "/console/meters/M1"), ("meters", "/console/meters"),
                           ("audit", "/console/audit"), ("alarms", "/console/alarms")):
            await b(browser.get, run.url + path)
            await b(browser.save_screenshot, str(shots / f"{name}.png"))
    await b(browser.get_log, "browser")  # emptied: the forged POST's 403 is in it
    for path in ("/console/meters/M1", "/console/alarms", "/console/audit"):
        await b(browser.get, run.url + path)
    # nothing the page asked for was refused (the Content-Security-Policy, a missing file)
    logged = await b(browser.get_log, "browser")
    assert [e["message"] for e in logged if e["level"] == "SEVERE"] == []
    # what tests/bench/bench_console.py reports: the Performance API's first paint
    await b(browser.get, run.url + "/console/")
    fcp = await wait_for(browser, lambda d: d.execute_script(FCP))
    assert fcp > 0  # the figure itself is the bench's, never asserted
    await b(browser.save_screenshot, str(tmp_path / "status.png"))
    assert (tmp_path / "status.png").stat().st_size > 1000
