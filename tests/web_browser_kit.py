"""What the browser tests of the web pages share: Debian's chromium driven by Playwright
(installed by the test set-up in CI, skipped with a clear message elsewhere when absent), the
real `storefront run` as a process of its own on loopback, and a stand-in for Telegram's
Mini App script (telegram-web-app.js) that carries a given initData and records the invoice
`openInvoice` was asked to open."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port as free_port  # the browser tests take it from here

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def _found() -> str | None:
    return shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)


def install_in_ci() -> None:
    """In CI (`CI=true`) a missing chromium is installed from Debian's packages, once, when
    the browser tests are collected (outside any test's time limit)."""
    if _found() is None and os.environ.get("CI") == "true":
        for argv in (["apt-get", "update"],
                     ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
            subprocess.run(argv, check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=900)


def chromium() -> str:
    """The system chromium; elsewhere than CI a missing one skips the test, saying how to
    get it."""
    found = _found()
    if found is None:
        pytest.skip("browser tests need Debian's chromium: apt-get install -y chromium "
                    "chromium-driver")
    return found


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


class Storefront:
    """`storefront run` with `env`, its log in `where/service.log`."""

    def __init__(self, where: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = where / "service.log"
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("TELEGRAM_", "WECHAT_", "STOREFRONT_", "DATABASE_",
                                     "REDIS_"))}
        self.env = {**base, "STOREFRONT_HTTP_PORT": str(self.port), "STOREFRONT_LOG_FILE": "-",
                    "STOREFRONT_CHARGE_SPOOL": str(where / "spool.jsonl"),
                    "PYTHONPATH": str(ROOT), **env}
        script = Path(sys.executable).parent / "storefront"
        with self.log.open("wb") as out:
            # stdin stays open: without a chat channel `run` is the console chat, which
            # would end at its input's end
            self.proc = subprocess.Popen([str(script), "run"], env=self.env, cwd=where,
                                         stdin=subprocess.PIPE, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.tail()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, "storefront did not come up\n" + self.tail()
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def says(self, words: str, timeout: float = 30.0) -> bool:
        """Whether the process's output comes to hold `words` within `timeout` (it may print
        after its server already answers)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.log.exists() and words in self.log.read_text(errors="replace"):
                return True
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def telegram_script(init_data: str) -> str:
    """telegram-web-app.js as the Mini App test needs it: initData, Telegram's theme
    variables (a visible orange button colour, to see that the page follows them) and
    `openInvoice` remembering its link and callback for the test to answer."""
    return ("window.Telegram={WebApp:{initData:" + json.dumps(init_data) + ","
            "initDataUnsafe:{},themeParams:{},ready:function(){},expand:function(){},"
            "openInvoice:function(link,cb){window.__invoice=link;window.__invoiceDone=cb;}}};"
            "document.documentElement.style.setProperty('--tg-theme-button-color','#e8710a');"
            "document.documentElement.style.setProperty('--tg-theme-secondary-bg-color',"
            "'#fdf1e6');")


def wechat_bridge() -> str:
    """WeChat's JS bridge: `getBrandWCPayRequest` remembers its parameters and callback."""
    return ("window.WeixinJSBridge={invoke:function(name,params,cb){window.__wxpay={name:name,"
            "params:params};window.__wxpayDone=cb;}};")


def only_loopback(page: Any, scripts: dict[str, str]) -> None:
    """Nothing leaves the machine: the scripts named are answered by the given bodies,
    anything else off loopback is refused."""
    def route(r: Any) -> None:
        url = r.request.url
        for prefix, body in scripts.items():
            if url.startswith(prefix):
                r.fulfill(status=200, content_type="application/javascript", body=body)
                return
        if url.startswith(("http://127.0.0.1", "data:")):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)


def wait(what: str, ok: Any, service: Storefront, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = ok()
        if value:
            return value
        assert service.proc.poll() is None, service.tail()
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{service.tail()}"
        time.sleep(0.1)


def wait_js(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Poll `expression` (a function) in the page until it gives something truthy; the
    page's CSP forbids eval, which Playwright's wait_for_function would need."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)
