"""In a real browser with no network: the docs render, and the playground chats.

Debian's ``chromium`` runs headless, driven by its own ``chromium-driver`` through
Selenium (nothing is downloaded). Skipped, saying why, when either is missing:
``apt-get install chromium chromium-driver``.

The browser resolves no host name at all (``--host-resolver-rules``), so a page
that reached for a CDN fails here even on a machine with a network; on top of
that every request a page makes is checked to go to chatq. Each test leaves a
screenshot (and the driver's log) in its ``tmp_path`` for a failure to be looked at.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Chatq
from tests.helpers import LONG, all_slots_busy, wait_done

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
TERMINAL = ("succeeded", "failed", "cancelled")
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        shot = tmp_path / "last.png"
        try:
            driver.save_screenshot(str(shot))
            print(f"screenshot: {shot}")
        except WebDriverException as exc:
            print(f"no screenshot: {exc.msg}")
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def wait(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = 60) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(what)


@dataclass
class Traffic:
    sent: list[str]  # requests that left the page
    blocked: list[str]  # requests the browser refused (the page's CSP) before the network


def traffic(driver: WebDriver) -> Traffic:
    """What the page requested since the last call (Chrome's performance log)."""
    urls: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return Traffic([u for r, u in urls.items() if r not in blocked],
                   [u for r, u in urls.items() if r in blocked])


def visit(driver: WebDriver, url: str) -> None:
    """Open url, with the logs of what came before (Chrome's new-tab page) dropped."""
    traffic(driver)
    driver.get_log("browser")
    driver.get(url)


def assert_only_chatq(driver: WebDriver, chatq: Chatq, refused: tuple[str, ...] = ()) -> Traffic:
    """Every network request since the last look went to chatq (Chrome's own chrome://
    pages, data: and blob: URLs never touch the network); the browser refused nothing but
    ``refused``, and the console has no other error."""
    seen = traffic(driver)
    foreign = [u for u in seen.sent if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and not u.startswith(chatq.base_url + "/")]
    assert foreign == [], foreign
    assert set(seen.blocked) <= set(refused), seen.blocked
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and not any(url in e["message"] for url in refused)]
    assert errors == [], errors
    return seen


def test_docs_render_the_operation_list_with_no_network(
    chatq: Chatq, browser: WebDriver, tmp_path: Path
) -> None:
    visit(browser, f"{chatq.base_url}/docs")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
    paths = {e.get_attribute("data-path")
             for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/models"} <= paths
    browser.save_screenshot(str(tmp_path / "docs.png"))
    seen = assert_only_chatq(browser, chatq)
    assert f"{chatq.base_url}/static/vendor/swagger-ui/swagger-ui-bundle.js" in seen.sent

    visit(browser, f"{chatq.base_url}/redoc")
    wait(browser, lambda d: {"Create Job", "Cancel Job", "Job Events"}
         <= set(d.find_element(By.TAG_NAME, "body").text.splitlines()))
    wait(browser, lambda d: d.execute_script("return document.fonts.status") == "loaded")
    fonts = browser.execute_script(
        "return [...document.fonts].filter(f => f.status === 'loaded').map(f => f.family)")
    assert {"Montserrat", "Roboto"} <= {f.strip("'\"") for f in fonts}
    browser.save_screenshot(str(tmp_path / "redoc.png"))
    # ReDoc 2.5's footer links its logo from a CDN; chatq's CSP has the browser refuse it.
    assert_only_chatq(browser, chatq, refused=(REDOC_LOGO,))


@dataclass
class Bubble:
    """An assistant message on the playground, as the page shows it."""

    job_id: str
    status: str
    text: str
    token_events: int
    summary: str


class Playground:
    def __init__(self, driver: WebDriver, chatq: Chatq) -> None:
        self.driver = driver
        self.chatq = chatq

    def open(self) -> None:
        visit(self.driver, f"{self.chatq.base_url}/playground")
        self.wait_models("ready")

    def wait_models(self, state: str) -> None:
        wait(self.driver, lambda d: d.find_element(By.ID, "model").get_attribute("data-state")
             == state)

    def field(self, element_id: str, value: str) -> None:
        element = self.driver.find_element(By.ID, element_id)
        element.clear()
        element.send_keys(value)

    def assistants(self) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant")

    def send(self, text: str) -> WebElement:
        """Type and send a message; the new assistant bubble once it has a job."""
        before = len(self.assistants())
        self.field("message", text)
        self.driver.find_element(By.ID, "send").click()
        wait(self.driver, lambda d: len(self.assistants()) > before
             and self.assistants()[-1].get_attribute("data-job-id"))
        return self.assistants()[-1]

    def read(self, bubble: WebElement) -> Bubble:
        return Bubble(
            job_id=bubble.get_attribute("data-job-id") or "",
            status=bubble.get_attribute("data-status") or "",
            text=self.driver.execute_script(
                "return arguments[0].querySelector('.text').textContent", bubble),
            token_events=int(bubble.get_attribute("data-token-events") or 0),
            summary=bubble.find_element(By.CSS_SELECTOR, ".status").text)

    def finished(self, bubble: WebElement, timeout: float = 120) -> Bubble:
        wait(self.driver, lambda d: bubble.get_attribute("data-status") in TERMINAL, timeout)
        wait(self.driver, lambda d: d.find_element(By.ID, "send").is_enabled())
        return self.read(bubble)

    def conversation(self) -> str:
        return self.driver.find_element(By.ID, "conversation-id").text


def test_playground_streams_an_answer_and_continues_the_conversation(
    chatq: Chatq, browser: WebDriver, client: httpx.Client, tmp_path: Path
) -> None:
    page = Playground(browser, chatq)
    page.open()
    assert browser.find_element(By.ID, "model").get_attribute("value") == "smollm2-135m"
    page.field("max-tokens", "40")

    first = page.finished(page.send("What is the capital of France? Answer in one sentence."))
    job = client.get(f"/v1/jobs/{first.job_id}").json()
    assert first.status == job["status"] == "succeeded"
    assert first.token_events >= 2  # the answer arrived over the SSE stream, in pieces
    assert first.text == job["output"] != ""
    assert "completion tokens" in first.summary and "tokens/s" in first.summary
    assert page.conversation() == job["conversation_id"]
    browser.save_screenshot(str(tmp_path / "first-answer.png"))

    second = page.finished(page.send("Say that again, in French."))
    job2 = client.get(f"/v1/jobs/{second.job_id}").json()
    assert second.status == "succeeded" and second.text == job2["output"] != ""
    assert job2["conversation_id"] == job["conversation_id"] == page.conversation()
    assert job2["history_messages"] == 2  # the first turn was in the prompt
    assert "2 earlier messages" in second.summary
    stored = client.get(f"/v1/conversations/{job['conversation_id']}").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"] * 2
    browser.save_screenshot(str(tmp_path / "conversation.png"))
    assert_only_chatq(browser, chatq)


def test_playground_shows_the_queue_position_and_stop_cancels_a_long_answer(
    chatq: Chatq, browser: WebDriver, client: httpx.Client, tmp_path: Path
) -> None:
    page = Playground(browser, chatq)
    page.open()
    page.field("max-tokens", "1500")
    page.field("temperature", "0")  # greedy: the demo model counts on until stopped
    with all_slots_busy(client):  # every slot of the worker busy: the message waits
        bubble = page.send(LONG)
        wait(browser, lambda d: re.fullmatch(r"queued · position \d+",
                                             page.read(bubble).summary))
        browser.save_screenshot(str(tmp_path / "queued.png"))

    wait(browser, lambda d: len(page.read(bubble).text) >= 20)  # tokens streaming in
    assert page.read(bubble).status == "running"
    browser.find_element(By.ID, "stop").click()
    stopped = page.finished(bubble, timeout=30)
    job = wait_done(client, stopped.job_id)
    assert stopped.status == job["status"] == "cancelled"
    assert job["usage"]["completion_tokens"] < 1500
    assert stopped.text == job["output"] != ""
    assert stopped.summary.startswith("cancelled")
    browser.save_screenshot(str(tmp_path / "stopped.png"))
    assert_only_chatq(browser, chatq)


def test_playground_shows_api_errors_and_keeps_the_key_in_the_tab(
    make_stack, browser: WebDriver, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    # Development with no keys takes any key: a stack with a key of its own refuses others.
    stack = make_stack(with_worker=False, env={"CHATQ_API__KEYS": "pg-key=dev"})
    page = Playground(browser, stack)
    visit(browser, f"{stack.base_url}/playground")
    page.field("api-key", "not-a-key\t")  # the tab commits the field
    page.wait_models("error")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text.startswith("401 unauthorized: invalid API key")
    assert browser.execute_script("return sessionStorage.getItem('chatq.apiKey')") == "not-a-key"
    assert browser.execute_script("return localStorage.length") == 0

    page.field("message", "Hello?")
    browser.find_element(By.ID, "send").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.user.not-sent"))
    assert page.assistants() == []
    assert "401 unauthorized" in error.text
    assert browser.find_element(By.ID, "message").get_attribute("value") == "Hello?"
    browser.save_screenshot(str(tmp_path / "unauthorized.png"))

    page.field("api-key", "pg-key\t")
    page.wait_models("ready")
    assert not browser.find_element(By.ID, "error").is_displayed()
