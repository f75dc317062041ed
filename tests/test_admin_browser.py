"""End-to-end admin story in a real browser: the shop admin logs in, edits an FAQ answer with the
live preview, is stopped by a syntax error and by a sandbox escape (the buyer keeps getting the
old answer), saves a good answer that a buyer in the web chat gets within 2 s, rolls back,
imports a CSV with one bad row (nothing imported, the row named) and opens the misses page.

Runs the real `kefu demo` in a subprocess (fresh data dir, admin password from the environment)
and drives Debian's Chromium with Playwright's sync API: one browser, two contexts (admin, buyer).
"""

from __future__ import annotations

import csv
import io
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "xiaoman-admin-2026"
SHOP = "小满生活馆"
QUESTION = "能开发票吗"
ORIGINAL = "本店可以开电子普通发票"
NEW_SOURCE = "亲，{{ shop_name }}支持开电子发票，也能开专票（新答案）"
NEW_TEXT = f"亲，{SHOP}支持开电子发票，也能开专票（新答案）"
MISSED = "zxqv blorp 比特币"

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=WAIT_MS)


class Demo:
    def __init__(self, proc: subprocess.Popen[bytes], base: str) -> None:
        self.proc, self.base = proc, base


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data_dir = tmp_path_factory.mktemp("kefu-admin") / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env.update(KEFU_HOURS_OPEN="00:00", KEFU_HOURS_CLOSE="00:00", KEFU_ADMIN_PASSWORD=PASSWORD,
               PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    log = data_dir.parent / "kefu-server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bots.cli", "demo", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"), bufsize=0)
    assert proc.stdout is not None
    out, deadline = "", time.monotonic() + 60
    while "Press Ctrl+C" not in out:
        left = deadline - time.monotonic()
        if proc.poll() is not None or left <= 0:
            proc.kill()
            proc.wait()
            pytest.fail(f"kefu demo did not start.\nstdout:\n{out}\nstderr:\n{log.read_text(errors='replace')}",
                        pytrace=False)
        if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
            out += proc.stdout.readline().decode("utf-8", errors="replace")
    assert PASSWORD not in out and PASSWORD not in log.read_text(errors="replace")  # never printed or logged
    base = re.search(r"buyer chat:\s+(http://\S+/)", out)
    assert base, out
    yield Demo(proc, base.group(1))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout:
            proc.stdout.close()
    assert PASSWORD not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class PageErrors:
    """Uncaught exceptions and console errors on a page. A refused form answers its page with 401
    or 422 on purpose (Chromium logs that as a failed load): those are expected, nothing else."""

    def __init__(self, page: Page, name: str) -> None:
        self.name, self.seen = name, []
        page.on("pageerror", lambda exc: self.seen.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, m: ConsoleMessage) -> None:
        url = (m.location or {}).get("url", "")
        expected = "status of 401" in m.text or "status of 422" in m.text
        if m.type == "error" and "favicon" not in url and not (expected and "/admin/" in url):
            self.seen.append(f"console: {m.text} ({url})")

    def check(self) -> None:
        assert not self.seen, f"{self.name} page errors: {self.seen}"


def _open(browser: Browser, name: str) -> tuple[Page, PageErrors]:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    return page, PageErrors(page, name)


def _sheet(tmp_path: Path) -> Path:
    """A spreadsheet with a good new entry, one whose answer does not parse, and a changed one."""
    buf = io.StringIO()
    csv.writer(buf).writerows([
        ["id", "title", "questions", "answer"],
        ["gift_card", "礼品卡", "有礼品卡吗\n能买购物卡吗", "亲，{{ shop_name }}暂不支持礼品卡哦～"],
        ["broken", "坏模板", "问题一|问题二", "亲，{% for %}"],
        ["invoice", "开发票", "能开发票吗", "亲，表格里的发票答案"],
    ])
    path = tmp_path / "faq.csv"
    path.write_bytes(buf.getvalue().encode("utf-8-sig"))  # what Excel's "CSV UTF-8" writes
    return path


def test_admin_edits_an_answer_that_a_buyer_gets_within_two_seconds(demo: Demo, browser: Browser,
                                                                     tmp_path: Path) -> None:
    admin, admin_errors = _open(browser, "admin")
    buyer, buyer_errors = _open(browser, "buyer chat")
    bot = buyer.locator("#log .msg.bot")

    def ask(question: str) -> None:
        buyer.fill("#text", question)
        buyer.press("#text", "Enter")

    # -- Not logged in: the login page. A wrong password is refused; the right one opens the FAQ list.
    admin.goto(demo.base + "admin")
    expect(admin).to_have_url(re.compile(r"/admin/login\?next="))
    expect(admin).to_have_title(re.compile(SHOP))
    admin.fill("#name", "小王")
    admin.fill("#password", "not-the-password")
    admin.locator("#login button[type=submit]").click()
    expect(admin.locator("#login-error")).to_contain_text("密码不对")
    admin.fill("#password", PASSWORD)
    admin.locator("#login button[type=submit]").click()
    expect(admin).to_have_url(re.compile(r"/admin/faq$"))
    expect(admin.locator("#whoami")).to_have_text("小王")

    # -- The buyer asks, and gets the shipped answer.
    buyer.goto(demo.base)
    ask(QUESTION)
    expect(bot.filter(has_text=ORIGINAL)).to_have_count(1)

    # -- Search, open the entry, type a new answer: the preview renders it with the shop's name.
    admin.fill("#q", "发票")
    admin.press("#q", "Enter")
    expect(admin.locator("#entries tbody tr[data-id]").first).to_be_visible()
    admin.locator('#entries tr[data-id="invoice"] a').click()
    expect(admin).to_have_url(re.compile(r"/admin/faq/zh-CN/invoice$"))
    expect(admin.locator("#preview")).to_contain_text(ORIGINAL)
    admin.fill("#answer", NEW_SOURCE)
    expect(admin.locator("#preview")).to_have_text(NEW_TEXT)
    expect(admin.locator("#preview-problems")).to_be_hidden()

    # -- A syntax error: the preview says so as it is typed; saving shows it with its line, saves nothing.
    admin.fill("#answer", "亲，发票\n{% if %}坏了")
    expect(admin.locator("#preview-problems")).to_contain_text("第2行")
    admin.locator("#save").click()
    problems = admin.locator("#problems")
    expect(problems).to_contain_text("没有保存")
    expect(problems).to_contain_text("第2行")
    expect(problems).to_contain_text("语法错误")
    expect(admin.locator("#answer")).to_have_value("亲，发票\n{% if %}坏了")  # the admin's text is kept
    ask(QUESTION)
    expect(bot.filter(has_text=ORIGINAL)).to_have_count(2)  # the old answer keeps serving

    # -- A sandbox escape is refused too, and never runs.
    admin.fill("#answer", "{{ ''.__class__.__mro__ }}")
    admin.locator("#save").click()
    expect(admin.locator("#problems")).to_contain_text("不允许的写法")
    expect(admin.locator("#problems")).to_contain_text("__class__")

    # -- A good answer: saved, and a buyer in the web chat gets it within 2 s.
    admin.fill("#answer", NEW_SOURCE)
    admin.locator("#save").click()
    expect(admin.locator("#flash")).to_contain_text("已保存")
    ask(QUESTION)
    expect(bot.filter(has_text=NEW_TEXT)).to_have_count(1, timeout=2000)

    # -- History: the version with its diff; roll back to the shipped file.
    admin.locator("#history-link").click()
    versions = admin.locator("#versions > li")
    expect(versions).to_have_count(2)
    expect(versions.first).to_contain_text("小王")
    expect(versions.first.locator(".diff .add")).to_contain_text(NEW_SOURCE)
    expect(versions.first.locator(".diff .del")).to_contain_text(ORIGINAL)
    admin.once("dialog", lambda dialog: dialog.accept())  # "roll back to this version?"
    admin.locator('#versions li[data-version="0"] button[data-action=rollback]').click()
    expect(admin.locator("#flash")).to_contain_text("已回滚")
    expect(versions).to_have_count(3)
    expect(versions.first).to_contain_text("rollback to v0")
    ask(QUESTION)
    expect(bot.filter(has_text=ORIGINAL)).to_have_count(3, timeout=2000)

    # -- Import a CSV with one bad row: nothing imported, the row named with the reason.
    admin.get_by_role("link", name="导入导出").click()
    admin.set_input_files("#file", _sheet(tmp_path))
    admin.locator("#import").click()
    expect(admin.locator("#report-summary")).to_contain_text("没有导入任何内容")
    bad = admin.locator('#report-rows tr[data-row="3"]')
    expect(bad).to_have_attribute("data-status", "rejected")
    expect(bad).to_contain_text("第3行")
    expect(bad).to_contain_text("语法错误")
    expect(admin.locator('#report-rows tr[data-row="2"]')).to_have_attribute("data-status", "added")
    admin.goto(demo.base + "admin/faq?q=gift_card")
    expect(admin.locator("#entries")).to_contain_text("没有找到条目")
    ask(QUESTION)
    expect(bot.filter(has_text=ORIGINAL)).to_have_count(4)

    # -- A question the bot cannot answer shows up on the misses page.
    ask(MISSED)
    expect(bot).to_have_count(7)  # the greeting, five answers and a "not sure"
    admin.get_by_role("link", name="未解决的问题").click()
    expect(admin).to_have_url(re.compile(r"/admin/misses$"))
    row = admin.locator("#misses tr", has_text=MISSED)
    expect(row).to_have_count(1)
    expect(row.locator("button[data-action=add-example]")).to_be_visible()
    expect(row.locator("a[data-action=new-entry]")).to_be_visible()

    admin_errors.check()
    buyer_errors.check()
    buyer.context.close()
    admin.context.close()
