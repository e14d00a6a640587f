"""The console's flows in a real browser against the real stack (see conftest.py):

- sign in with an API key; the session cookie is HttpOnly and SameSite=Strict;
- a job submitted through the API appears on the jobs page and reaches Success there without
  a reload; its timeline shows the submission, the notification and the events;
- a quarantined notification (the service ran with a stricter schema than CI's) is replayed
  from its page once the schema is fixed, and is accepted;
- a subscriber goes down, its deliveries fail (given up), it comes back, and "retry all
  failed" from the subscription's filter delivers every one;
- a read key sees no action buttons and its forged POST is refused (403); a POST without a
  CSRF token is refused (400);
- axe-core on every page: no serious or critical violation; screenshots at 1280x800.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import job_json
from tests.console.conftest import ADMIN_KEY, AXE, READ_KEY, SCREENSHOTS
from tests.e2e_stack import CIRELAY, Stack, poll, wait_http
from tests.subscriber import Subscriber

pytestmark = pytest.mark.slow


class Console:
    """The browser on the console of ``stack``."""

    def __init__(self, driver: WebDriver, stack: Stack) -> None:
        self.driver = driver
        self.stack = stack

    def open(self, path: str) -> None:
        self.driver.get(self.stack.base + path)

    def sign_in(self, key: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/console/")
        assert "/console/sign-in" in self.driver.current_url
        field = self.driver.find_element(By.ID, "api_key")
        field.send_keys(key)
        field.send_keys(Keys.ENTER)  # the keyboard alone signs in
        poll("the overview", lambda: self.driver.find_elements(By.ID, "figures") or None)

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def wait_text(self, what: str, pattern: str, deadline: float = 30) -> str:
        def found() -> str | None:
            try:
                match = re.search(pattern, self.text())
            except (NoSuchElementException, StaleElementReferenceException):
                return None  # between two pages (a form's answer loading): not there yet
            return match.group(0) if match else None

        try:
            return poll(what, found, deadline=deadline, every=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the page ({self.driver.current_url}):\n"
                                 f"{self.text()[:3000]}") from None  # fmt: skip

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def posts(self) -> list[str]:
        """The actions of the page's POST forms (sign-out aside)."""
        forms = self.driver.find_elements(By.CSS_SELECTOR, "form[method=post]")
        actions = [str(f.get_attribute("action")) for f in forms]
        return [a for a in actions if not a.endswith("/console/sign-out")]

    def fetch(self, path: str, body: str, headers: dict[str, str]) -> int:
        """A POST from inside the page (same origin, the session cookie sent): its status."""
        script = """
            const done = arguments[arguments.length - 1];
            fetch(arguments[0], {method: "POST", body: arguments[1], headers: arguments[2],
                                 credentials: "same-origin", redirect: "manual"})
              .then(r => done(r.status), e => done(String(e)));
        """
        status = self.driver.execute_async_script(script, path, body, headers)
        assert isinstance(status, int), status
        return status

    def csrf_token(self) -> str:
        attribute = self.driver.find_element(By.TAG_NAME, "body").get_attribute("hx-headers")
        token: str = json.loads(attribute or "{}")["X-CSRFToken"]
        return token

    def axe(self, page: str) -> None:
        """axe-core's violations of impact serious or critical: none."""
        self.driver.execute_script(AXE.read_text())
        script = """
            const done = arguments[arguments.length - 1];
            axe.run(document, {resultTypes: ["violations"]})
              .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact,
                  help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target)}))),
                    e => done([{id: "axe-error", impact: "critical", help: String(e)}]));
        """
        violations: list[dict[str, Any]] = self.driver.execute_async_script(script)
        bad = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert not bad, f"{page}: {json.dumps(bad, indent=1)}"

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """The page's viewport exactly (the window's size includes the browser's frame)."""
        self.driver.execute_cdp_cmd(  # type: ignore[attr-defined]
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.viewport(1280, 800)
        self.driver.execute_script("window.scrollTo(0, 0)")
        assert self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def overflow(self) -> int:
        """How far the page is wider than the window (0: it fits)."""
        width: int = self.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        return width

    def check(self, name: str) -> None:
        """Every page: accessible, as wide as the window at 1280 px, and a screenshot."""
        self.axe(name)
        self.shot(name)
        assert self.overflow() <= 0, f"{name} is wider than 1280 px"


@pytest.fixture(scope="module")
def console(browser: WebDriver, stack: Stack) -> Console:
    browser.set_script_timeout(30)
    return Console(browser, stack)


def subscribe(stack: Stack, url: str) -> dict[str, Any]:
    body = {"url": url, "event_types": ["com.cirelay.job.*"], "description": "console test"}
    response = stack.http.post(f"{stack.base}/v1/subscriptions", json=body, headers=stack.auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def deliveries(stack: Stack, sub: str, state: str) -> list[dict[str, Any]]:
    response = stack.http.get(
        f"{stack.base}/v1/subscriptions/{sub}/deliveries", params={"state": state, "limit": 200},
        headers=stack.auth, timeout=10,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


# --- the flows --------------------------------------------------------------------------------


def test_sign_in_gives_a_strict_http_only_session_and_the_overview(console: Console) -> None:
    console.driver.delete_all_cookies()
    console.open("/console/jobs")
    assert "/console/sign-in" in console.driver.current_url
    console.check("sign-in")
    console.sign_in(ADMIN_KEY)
    (cookie,) = [c for c in console.driver.get_cookies() if c["name"] == "cirelay_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert ADMIN_KEY not in cookie["value"]
    assert "Quarantine" in console.text() and "Delivery backlog" in console.text()
    assert console.driver.find_elements(By.CSS_SELECTOR, "svg.chart")


def test_a_job_reaches_success_on_the_jobs_page_without_reloading(console: Console) -> None:
    console.sign_in(ADMIN_KEY)
    console.open("/console/jobs")
    console.driver.execute_script("window.notReloaded = true")
    job = console.stack.submit(job_json(user_data="watch-me"))
    row = f"row-{job['id']}"
    poll("the job's row", lambda: console.driver.find_elements(By.ID, row) or None)

    def state() -> str:
        cells = console.driver.find_elements(By.CSS_SELECTOR, f"#{row} .job-state")
        return str(cells[0].text) if cells else ""

    seen = {state()}
    poll("Success on the page", lambda: seen.add(state()) or "Success" in seen, every=0.2)
    assert console.driver.execute_script("return window.notReloaded") is True
    console.check("jobs")

    console.driver.find_element(By.LINK_TEXT, job["id"]).click()
    console.wait_text("the timeline", r"Timeline")
    timeline = console.driver.find_element(By.ID, "timeline").text
    assert "submission" in timeline and "CI answered with JobId" in timeline
    assert "notification Success (accepted, callback)" in timeline
    assert "com.cirelay.job.succeeded" in timeline
    assert console.driver.find_elements(By.ID, "ci-request")
    console.check("job-timeline")

    console.open("/console/")
    console.check("overview")


def test_a_quarantined_notification_replayed_after_a_schema_fix_is_accepted(
    console: Console, stack: Stack
) -> None:
    long_name = "stems/" + "x" * 80 + "/${jobid}/bgm.${ext}"
    job = stack.submit(job_json(output={**job_json()["output"], "object": long_name}))
    poll("the notification quarantined", lambda: stack.quarantined(job["id"]) or None)
    console.sign_in(ADMIN_KEY)
    console.open(f"/console/quarantine?job_id={job['id']}")
    console.check("quarantine")
    first = stack.quarantined(job["id"])[0]["id"]
    console.driver.find_element(By.CSS_SELECTOR, f"#quarantined-{first} a").click()
    console.wait_text("the reasons", r"MediaResult/OutputFile/Md5Info(\[\d\])?/ObjectName")
    marked = console.driver.find_elements(By.CSS_SELECTOR, ".line.marked mark")
    assert marked and all("ObjectName" in m.text for m in marked), [m.text for m in marked]
    console.driver.execute_script(  # the body's own scroll shows the marked line
        "const m = document.querySelector('.line.marked');"
        "m.closest('pre').scrollTop = m.offsetTop - 120;"
    )
    console.check("quarantined")

    _restart_service_with_real_schemas(stack)
    console.driver.refresh()
    console.click("replay")
    console.wait_text("the replay's outcome", r"replayed: accepted")
    assert "accepted" in console.driver.find_element(By.ID, "replay-outcome").text
    assert stack.job(job["id"])["state"] == "Success"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _restart_service_with_real_schemas(stack: Stack) -> None:
    """The schema fix deployed: the service restarted without ``CIRELAY_SCHEMA_DIR``."""
    serve = next(p for p in stack.processes if p.name == "serve")
    serve.stop()
    stack.processes.remove(serve)
    # its workers finish the browser's open connections first (a graceful stop): the port
    # comes free once they have
    deadline = time.monotonic() + 40
    while not _port_free(stack.service_port):
        assert time.monotonic() < deadline, f"port {stack.service_port} still held"
        time.sleep(0.2)
    stack.env = {k: v for k, v in stack.env.items() if k != "CIRELAY_SCHEMA_DIR"}
    fixed = stack._spawn("serve-fixed", ["serve", "--port", str(stack.service_port),
                                         "--workers", "2"])  # fmt: skip
    wait_http("the service", f"{stack.base}/readyz", fixed)


def test_retry_all_failed_from_the_filter_delivers_them_once_the_subscriber_is_back(
    console: Console, stack: Stack
) -> None:
    with Subscriber() as hook:
        sub = subscribe(stack, hook.url())
        hook.stop()
        jobs = [stack.submit(job_json(user_data=f"down-{n}")) for n in range(2)]
        for job in jobs:
            stack.wait_final(job["id"])
        failed = poll("every delivery given up", lambda: (
            found if len(found := deliveries(stack, sub["id"], "failed")) >= 4
            and not deliveries(stack, sub["id"], "pending") else None
        ), deadline=60)  # fmt: skip
        hook.start()

        console.sign_in(ADMIN_KEY)
        console.open(f"/console/subscriptions/{sub['id']}")
        state = console.driver.find_element(By.ID, "filter-state")
        state.find_element(By.CSS_SELECTOR, "option[value=failed]").click()
        console.click("apply-filter")
        console.wait_text("the filtered page", rf"Retry all {len(failed)} failed matching")
        console.check("subscription")
        console.click("retry-matching")
        console.wait_text("the count before confirming", rf"Retry {len(failed)} failed deliveries")
        console.check("confirm")
        console.click("confirm")
        console.wait_text("the result", rf"Retrying {len(failed)} deliveries now")

        ids = {d["event_id"] for d in failed}
        poll("every failed delivery delivered", lambda: ids <= {
            r.webhook_id for r in hook.accepted()} or None, deadline=30)  # fmt: skip
        poll("none failed any more", lambda: not deliveries(stack, sub["id"], "failed"))
        hook.verified(sub["secret"])
    console.open("/console/audit")
    assert "deliveries retried" in console.text()
    console.check("audit")


def test_every_page_is_accessible_and_a_read_key_sees_no_action(
    console: Console, stack: Stack
) -> None:
    with Subscriber() as hook:
        sub = subscribe(stack, hook.url())
        console.sign_in(ADMIN_KEY)
        console.open("/console/subscriptions")
        console.check("subscriptions")
        console.open("/console/events")
        console.check("events")
        console.open(f"/console/subscriptions/{sub['id']}")
        assert any(a.endswith("/test") for a in console.posts())
        token = console.csrf_token()
        # an admin's POST without the CSRF token: refused, and nothing is sent
        status = console.fetch(f"/console/subscriptions/{sub['id']}/test", "", {})
        assert status == 400 and not hook.received()

        console.sign_in(READ_KEY)
        for path in ("/console/", "/console/jobs", "/console/quarantine",
                     "/console/subscriptions", f"/console/subscriptions/{sub['id']}",
                     "/console/events", "/console/audit"):  # fmt: skip
            console.open(path)
            assert console.posts() == [], path
        quarantined = stack.quarantined()
        console.open(f"/console/quarantine/{quarantined[0]['id']}")
        assert console.posts() == [] and not console.driver.find_elements(By.ID, "replay")
        # a forged POST with the read session's own CSRF token: 403, nothing sent
        token = console.csrf_token()
        form = f"csrf_token={token}"
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        assert console.fetch(f"/console/subscriptions/{sub['id']}/test", form, headers) == 403
        assert not hook.received()


def test_the_console_follows_the_event_stream_live(console: Console, stack: Stack) -> None:
    console.sign_in(ADMIN_KEY)
    console.open("/console/events")
    console.click("follow")
    job = stack.submit(job_json(user_data="live"))
    console.wait_text("the live events", re.escape(job["id"]) + r"[\s\S]*")
    rows = console.driver.find_elements(By.CSS_SELECTOR, "#event-rows tr.new-event")
    assert any(job["id"] in r.text for r in rows)


def test_the_pages_fit_a_phone_and_sign_out_ends_the_session(console: Console) -> None:
    console.sign_in(ADMIN_KEY)
    console.open("/console/jobs")
    body = console.driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)  # the keyboard's first stop skips to the content
    focused = console.driver.switch_to.active_element
    assert focused.get_attribute("class") == "skip"
    focused.send_keys(Keys.ENTER)
    assert console.driver.current_url.endswith("#content")
    console.viewport(390, 844, mobile=True)
    try:
        for path in ("/console/", "/console/jobs", "/console/subscriptions", "/console/quarantine",
                     "/console/events", "/console/audit"):  # fmt: skip
            console.open(path)
            assert console.overflow() <= 0, path
    finally:
        console.viewport(1280, 800)
    console.click("sign-out")
    console.open("/console/jobs")
    assert "/console/sign-in" in console.driver.current_url


def test_cirelay_routes_lists_the_console(stack: Stack) -> None:
    routes = subprocess.run([*CIRELAY, "routes"], capture_output=True, text=True, check=True,
                            env=stack.env).stdout  # fmt: skip
    assert "/console/jobs/<ident>" in routes
