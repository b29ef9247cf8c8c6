"""The web dashboard at / driven by real headless Chromium (Debian's chromium + chromium-driver, via selenium)
against a running proxy in front of a real primary and standby."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.helpers import REPO_ROOT
from tests.helpers.pgcluster import PgCluster
from tests.helpers.proxy import ProxyFactory, ProxyProcess

TOKEN = "dashboard-test-token-7f3a"
HEALTH = {"interval": "250ms", "timeout": "500ms", "failures_before_down": 2, "successes_before_up": 1}
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"  # screenshots of the run (git-ignored)
DESKTOP = (1366, 900)
PHONE = (390, 844)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium and chromium-driver come from scripts/sysdeps.sh (make install)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_bin))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except StaleElementReferenceException:  # the page re-rendered under us: ask again
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not seen within {timeout}s"
        time.sleep(0.05)


def _console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]  # type: ignore[no-untyped-call]


def _nodes(driver: WebDriver) -> dict[str, str]:
    """node name -> state, as the page shows them."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-node]")
    return {r.get_attribute("data-node") or "": r.get_attribute("data-state") or "" for r in rows}


def _visible(driver: WebDriver, css: str) -> bool:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return bool(found) and found[0].is_displayed()


def _screenshot(driver: WebDriver, name: str, size: tuple[int, int]) -> Path:
    """A full-page PNG at this viewport width (phone widths emulate a mobile viewport), under tests/artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    mobile = size[0] < 600
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # type: ignore[attr-defined]
    try:
        time.sleep(0.3)  # let the layout settle at the new width
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        metrics["height"] = min(max(height, size[1]), 8000)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # type: ignore[attr-defined]
        time.sleep(0.2)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})  # type: ignore[attr-defined]
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})  # type: ignore[attr-defined]
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def _api(proxy: ProxyProcess, path: str) -> Any:
    req = urllib.request.Request(proxy.admin_url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def _click_and_answer(driver: WebDriver, css: str, accept: bool) -> str:
    driver.find_element(By.CSS_SELECTOR, css).click()
    alert = _until(lambda: _alert(driver), 5, "confirmation dialog")
    text = alert.text
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return str(text)


def _alert(driver: WebDriver) -> Any:
    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def _pool_active(driver: WebDriver) -> int:
    cells = driver.find_elements(By.CSS_SELECTOR, '#pools tr[data-database="app"] td[data-field="active"]')
    return sum(int(c.text or 0) for c in cells)


def test_dashboard_with_token(
    cluster_factory: Callable[..., PgCluster], proxy_factory: ProxyFactory, browser: WebDriver, tmp_path: Path
) -> None:
    pg = cluster_factory(standbys=1)
    proxy = proxy_factory({"admin": {"token": TOKEN}, "health": HEALTH, "pool": {"size": 12}}, cluster=pg)
    _until(lambda: all(n["state"] == "up" for n in _api(proxy, "/api/nodes")), 10, "nodes up")

    # The page and its static files load without the token, then ask for it before showing anything.
    browser.get(proxy.admin_url + "/")
    _until(lambda: _visible(browser, "#login"), 5, "token prompt")
    assert not _visible(browser, "#views") and not _visible(browser, "#reload")
    assert _nodes(browser) == {}

    # A wrong token is refused: still no data, no actions.
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "unlock").click()
    _until(lambda: _visible(browser, "#login-error") and "refused" in browser.find_element(By.ID, "login-error").text,
           5, "wrong token refused")
    assert not _visible(browser, "#views") and not _visible(browser, "#reload")
    browser.get_log("browser")  # type: ignore[no-untyped-call]  # the 401 above is expected: start a clean log

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "unlock").click()
    _until(lambda: _nodes(browser) == {"primary": "up", "standby1": "up"}, 10, "both nodes up")
    assert _console_errors(browser) == []
    assert browser.execute_script("return sessionStorage.getItem('heliosproxy.admin.token')") == TOKEN
    assert TOKEN not in browser.page_source and "apppass" not in browser.page_source
    assert TOKEN not in browser.current_url

    # Load: the pool's active count rises while pgbench runs.
    assert _pool_active(browser) == 0
    script = tmp_path / "sleep.sql"
    script.write_text("SELECT pg_sleep(0.25);\n")
    bench = subprocess.Popen(["pgbench", "-n", "-c", "6", "-j", "2", "-T", "12", "-f", str(script), proxy.dsn()],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        peak = _until(lambda: (n := _pool_active(browser)) >= 3 and n, 8, "pool active count rising under load")
        assert peak >= 3
        # The clients view is filterable.
        flt = browser.find_element(By.ID, "client-filter")
        flt.send_keys("pgbench")
        _until(lambda: browser.find_element(By.ID, "clients-count").text.startswith("6 shown"), 3, "filter: pgbench")
        flt.send_keys("-no-such-client")
        _until(lambda: browser.find_element(By.ID, "clients-count").text.startswith("0 shown"), 3, "filter: none")
        flt.clear()
        _until(lambda: browser.find_element(By.ID, "clients-count").text.startswith("6 shown"), 3, "filter cleared")
        # Let the charts gather a few samples, then take the screenshots with load on.
        _until(lambda: browser.find_element(By.ID, "qps-now").text not in ("", "0.0/s"), 5, "throughput shown")
        time.sleep(5)
        desktop = _screenshot(browser, "dashboard-desktop", DESKTOP)
        phone = _screenshot(browser, "dashboard-phone", PHONE)
        assert desktop.stat().st_size > 20_000 and phone.stat().st_size > 20_000
    finally:
        out, err = bench.communicate(timeout=60)
    assert bench.returncode == 0, out + err
    _until(lambda: _pool_active(browser) == 0, 5, "active back to 0 after the load")

    # A node shown down within 5 s of stopping it.
    standby = pg.standbys[0]
    started = time.monotonic()
    pg.stop_node(standby)
    _until(lambda: _nodes(browser).get("standby1") == "down", 5, "standby1 shown down")
    assert time.monotonic() - started <= 5.0
    _until(lambda: "standby1: up → down" in browser.find_element(By.ID, "events").text, 3, "the change in Events")
    _screenshot(browser, "dashboard-node-down", DESKTOP)

    # Reload: behind a confirmation; dismissing does nothing, accepting reloads.
    before = _api(proxy, "/api/stats")["reloads_ok"]
    assert "Reload" in _click_and_answer(browser, "#reload", accept=False)
    time.sleep(0.5)
    assert _api(proxy, "/api/stats")["reloads_ok"] == before
    _click_and_answer(browser, "#reload", accept=True)
    _until(lambda: "reloaded" in browser.find_element(By.ID, "message").text, 5, "reload message")
    assert _api(proxy, "/api/stats")["reloads_ok"] == before + 1
    _until(lambda: browser.find_element(By.ID, "counters").get_attribute("data-reloads-ok") == str(before + 1), 5,
           "reload counted on the page")

    # Forgetting the token hides data and actions again.
    browser.find_element(By.ID, "forget").click()
    _until(lambda: _visible(browser, "#login"), 5, "token prompt again")
    assert not _visible(browser, "#reload")
    assert browser.execute_script("return sessionStorage.getItem('heliosproxy.admin.token')") is None


def test_dashboard_without_token_is_read_only(
    cluster: PgCluster, proxy_factory: ProxyFactory, browser: WebDriver
) -> None:
    proxy = proxy_factory({"health": HEALTH})
    browser.get(proxy.admin_url + "/")
    _until(lambda: set(_nodes(browser)) == {"primary", "standby1", "standby2"}, 10, "nodes shown without a token")
    assert not _visible(browser, "#login")
    assert _visible(browser, "#readonly-note")
    # No actions at all: no reload button, no buttons in the views.
    assert not _visible(browser, "#reload")
    assert browser.find_elements(By.CSS_SELECTOR, "main button") == []
    # And the API refuses a POST made from the page itself.
    status = browser.execute_async_script(
        "const done = arguments[0];"
        "fetch('/api/reload', {method: 'POST'}).then(r => done(r.status), e => done(String(e)));"
    )
    assert status == 403
    errors = [e for e in _console_errors(browser) if "/api/reload" not in e.get("message", "")]
    assert errors == []


def test_dashboard_can_be_turned_off(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"dashboard": False}})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(proxy.admin_url + "/", timeout=5)
    assert ei.value.code == 404
    with urllib.request.urlopen(proxy.admin_url + "/live", timeout=5) as r:
        assert r.status == 200


def test_static_files_are_served_with_a_strict_policy(cluster: PgCluster, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory({"admin": {"token": TOKEN}})
    for path, ctype in (("/", "text/html"), ("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        with urllib.request.urlopen(proxy.admin_url + path, timeout=5) as r:  # no token needed
            assert r.status == 200 and r.headers["Content-Type"].startswith(ctype)
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
    for bad in ("/static/../http.py", "/static/nope.js", "/static/%2e%2e/http.py", "/static/app.py"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(proxy.admin_url + bad, timeout=5)
        assert ei.value.code == 404, bad
    with urllib.request.urlopen(proxy.admin_url + "/ui.json", timeout=5) as r:
        assert json.load(r) == {"token_required": True}  # nothing else before the token


def test_dashboard_actions_pause_resume_and_plugin_toggle(
    cluster: PgCluster, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    """The HTTP actions behind the dashboard's pause/resume and plugin buttons, with real clients."""
    import psycopg

    pdir = tmp_path / "plugins"
    pdir.mkdir()
    for ext in ("wasm", "yaml"):
        shutil.copy(REPO_ROOT / "plugins" / "build" / f"block_ddl.{ext}", pdir / f"block_ddl.{ext}")
    proxy = proxy_factory({"admin": {"token": TOKEN}, "plugins": {"dir": str(pdir)}})

    def post(path: str) -> tuple[int, Any]:
        req = urllib.request.Request(proxy.admin_url + path, method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE dash_t (x int)")
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("DROP TABLE dash_t")
        assert ei.value.sqlstate == "42000"  # block_ddl refused it
        status, plugin = post("/api/plugins/block_ddl/disable")
        assert status == 200 and plugin["disabled"] is True
        conn.execute("DROP TABLE dash_t")  # the guard is off
        status, plugin = post("/api/plugins/block_ddl/enable")
        assert status == 200 and plugin["disabled"] is False
        conn.execute("CREATE TEMP TABLE dash_t (x int)")
        with pytest.raises(psycopg.Error) as ei:
            conn.execute("DROP TABLE dash_t")
        assert ei.value.sqlstate == "42000"  # block_ddl refused it
        assert post("/api/plugins/ghost/disable")[0] == 404

    assert post("/api/databases/app/pause") == (200, {"database": "app", "paused": ["app"]})
    assert _api(proxy, "/api/stats")["paused"] == ["app"]
    done: list[Any] = []

    def query() -> None:
        with psycopg.connect(proxy.dsn(), autocommit=True) as c:
            done.append(c.execute("SELECT 5").fetchone())

    import threading

    t = threading.Thread(target=query, daemon=True)
    t.start()
    t.join(1.0)
    assert done == [], "a statement ran while the database was paused"
    assert post("/api/databases/app/resume")[0] == 200
    t.join(5.0)
    assert done == [(5,)]
    assert post("/api/databases/app/resume")[0] == 409  # not paused


def test_dashboard_shows_anomalies_and_circuit_state(
    cluster: PgCluster, proxy_factory: ProxyFactory, browser: WebDriver, tmp_path: Path
) -> None:
    """Recent anomalies come from /api/anomalies (sqli_guard here); the circuit column shows /api/nodes' breaker."""
    import psycopg

    from tests.wat_e2e.kit import install_example

    pdir = tmp_path / "plugins"
    install_example(pdir, "sqli_guard")  # report mode
    proxy = proxy_factory({"health": HEALTH, "plugins": {"dir": str(pdir)}})
    browser.get(proxy.admin_url + "/")
    _until(lambda: set(_nodes(browser)) == {"primary", "standby1", "standby2"}, 10, "nodes shown")
    _until(lambda: "none reported" in browser.find_element(By.ID, "anomalies").text, 5, "no anomalies yet")

    # The circuit column: the node's breaker state when /api/nodes has one, "n/a" when it does not.
    api = {n["name"]: n for n in _api(proxy, "/api/nodes")}

    def circuits() -> dict[str, str]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#nodes tbody tr[data-node]")
        return {r.get_attribute("data-node") or "": r.find_element(By.CSS_SELECTOR, '[data-field="breaker"]').text
                for r in rows}

    want = {name: (n["breaker"].replace("_", "-") if n.get("breaker") else "n/a") for name, n in api.items()}
    _until(lambda: circuits() == want, 5, f"circuit states {want}")

    probe = "SELECT 1 AS x WHERE '' = '' OR 1=1 -- dashboard"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SET helios.tenant = 'dash-tenant'")
        assert conn.execute(probe).fetchone() == (1,)
    css = '#anomalies tbody tr[data-plugin="sqli_guard"][data-kind="tautology"]'
    row = _until(lambda: browser.find_elements(By.CSS_SELECTOR, css), 5, "the tautology event on the page")[0]
    assert row.get_attribute("data-severity") == "high"
    assert "dash-tenant" in row.text and probe in row.text
    assert browser.find_element(By.ID, "anomalies-count").text == "newest 1"
    assert _console_errors(browser) == []
    _screenshot(browser, "dashboard-anomalies", DESKTOP)
