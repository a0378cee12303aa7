"""On demand: the web console's first paint (issue 17 §4).  Printed, never asserted.

    .venv/bin/python tests/bench/bench_console.py [--loads 20] [--rows 1000000]

A real ``amic run`` process with its API and console, a ledger of 1000 meters (10 areas),
a store of ``--rows`` readings (bench_api.py's store) plus a day's load curve (96 points)
of M0001, and 4 simulated DL/T645 meters on a TCP bus.  Headless Chromium (Debian's
``chromium`` through ``chromium-driver``, Selenium) logs in with a viewer token, then
loads each page ``--loads`` times; for each load the Performance API's
``first-contentful-paint`` and, from the navigation timing, the server's time to the
first byte.  The first load of each page (its CSS and script not cached yet) is shown
apart from the median.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_api import (  # noqa: E402
    AREAS,
    METERS,
    build_store,
    meter_id,
    running_daemon,
)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from collector.store.schema import INSERT_READING  # noqa: E402

ZONE = ZoneInfo("Asia/Shanghai")  # [daily] tz's default: the console's local day
FCP = """const e = performance.getEntriesByName('first-contentful-paint');
         const n = performance.getEntriesByType('navigation')[0];
         return e.length ? [e[0].startTime, n.responseStart - n.requestStart,
                            n.domContentLoadedEventEnd] : null;"""


def add_curve(db: Path) -> None:
    """Today's load curve of M0001: 96 quarter-hour points timestamped by the meter."""
    midnight = dt.datetime.combine(dt.datetime.now(ZONE).date(), dt.time(), ZONE)
    now = int(time.time() * 1000)
    conn = sqlite3.connect(db)
    first = conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0] + 1
    conn.executemany(INSERT_READING, (
        (meter_id(0), "power_active_total", 1.0 + (i % 24) / 10, "kW", now,
         int((midnight + dt.timedelta(minutes=15 * i)).timestamp() * 1000), 0)
        for i in range(96)))
    conn.execute("INSERT INTO reads (first_id, last_id, meter, ts) VALUES (?, ?, ?, ?)",
                 (first, first + 95, meter_id(0), now))
    conn.commit()
    conn.close()


def chrome() -> WebDriver:
    opts = Options()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts,
                            service=Service(shutil.which("chromedriver") or "chromedriver"))


def load(driver: WebDriver, url: str) -> tuple[float, float, float]:
    driver.get(url)
    got: Any = WebDriverWait(driver, 10, poll_frequency=0.02).until(
        lambda d: d.execute_script(FCP))
    return float(got[0]), float(got[1]), float(got[2])


def measure(base: str, token: str, loads: int) -> None:
    driver = chrome()
    try:
        driver.get(base + "/console/login")
        driver.find_element(By.ID, "token").send_keys(token)
        driver.find_element(By.ID, "login-button").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "buses"))
        pages = (("status", "/console/"), ("meter M0001", f"/console/meters/{meter_id(0)}"),
                 ("meter search", "/console/meters"))
        driver.get("about:blank")
        for name, path in pages:
            first = load(driver, base + path)
            got = [load(driver, base + path) for _ in range(loads)]
            fcp = [g[0] for g in got]
            ttfb = [g[1] for g in got]
            dcl = [g[2] for g in got]
            print(f"   {name:13s} first paint median {statistics.median(fcp):6.0f} ms "
                  f"(min {min(fcp):.0f}, max {max(fcp):.0f}; the first load "
                  f"{first[0]:.0f} ms)  server to first byte median "
                  f"{statistics.median(ttfb):5.0f} ms  DOM ready {statistics.median(dcl):5.0f}"
                  " ms")
            if name.startswith("meter M"):
                pts = driver.find_element(By.ID, "curve").get_attribute("data-points")
                print(f"   {'':13s} (its curve plot: {pts} points)")
    finally:
        driver.quit()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "data").mkdir()
        took, _ = build_store(d / "data" / "amic.db", args.rows)
        add_curve(d / "data" / "amic.db")
        print(f"store: {args.rows:,} readings of {METERS} meters in {AREAS} areas, built in "
              f"{took:.0f} s; today's curve of {meter_id(0)} (96 points)")
        async with running_daemon(d) as (api_port, tokens):
            print(f"\nconsole first paint, headless Chromium, {args.loads} loads a page "
                  "(logged in as a viewer):")
            await asyncio.to_thread(measure, f"http://127.0.0.1:{api_port}",
                                    tokens["viewer"], args.loads)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1_000_000)
    asyncio.run(main(ap.parse_args()))
