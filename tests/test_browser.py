"""End-to-end browser story: a buyer files a damaged-parcel claim in the web chat,
an agent works the case in the web desk, and the buyer rates the service.

Runs the real `kefu demo` server in a subprocess (fresh data dir, agents always on
duty) and drives Debian's Chromium (/usr/bin/chromium) with Playwright's sync API:
one browser, two contexts (buyer and agent), so the pages share nothing but the server.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
WAIT_MS = 10_000  # every auto-waiting check: long enough for a slow CI box, short enough to fail fast

SHOP = "小满生活馆"
# A first sentence the router files straight away as a damaged-parcel claim, so the
# bot keeps it as the description and never asks for one.
FIRST_SENTENCE = "我买的杯子碎了"
BAD_ORDER = "12345"
ORDER = "3849201756382910475"
AGENT = "小林"
REPLY = "亲，非常抱歉！我们马上为您补发一个新杯子，今天就发出～"
BUYER_FOLLOW_UP = "好的，谢谢，麻烦尽快"
SUMMARY = "已补发新杯子，顺丰单号 SF1234567890，破损的杯子不用寄回"
FIVE_STARS = "⭐⭐⭐⭐⭐"

pytestmark = pytest.mark.timeout(120)
expect.set_options(timeout=WAIT_MS)


# --- the server ------------------------------------------------------------------------------


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, token: str, log: Path) -> None:
        self.proc, self.base, self.token, self.log = proc, base, token, log

    def desk_api(self, path: str, token: str | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.base + path.lstrip("/"),
                                     headers={"Authorization": f"Bearer {self.token if token is None else token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)


def _start_server(data_dir: Path) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}  # nothing from the host's setup
    env.update(KEFU_HOURS_OPEN="00:00", KEFU_HOURS_CLOSE="00:00",  # agents always on duty: stable wording
               PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    log = data_dir.parent / "kefu-server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bots.cli", "demo", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"),
        bufsize=0,  # unbuffered: select() on the pipe then sees every line
    )
    assert proc.stdout is not None
    out, deadline = "", time.monotonic() + 30
    while "desk token:" not in out:
        left = deadline - time.monotonic()
        if proc.poll() is not None or left <= 0:
            proc.kill()
            proc.wait()
            pytest.fail(f"kefu demo did not start (exit {proc.returncode}).\nstdout:\n{out}\n"
                        f"stderr:\n{log.read_text(errors='replace')}", pytrace=False)
        if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
            out += proc.stdout.readline().decode("utf-8", errors="replace")
    base = re.search(r"buyer chat:\s+(http://\S+/)", out)
    token = re.search(r"desk token:\s+(\S+)", out)
    assert base and token, out
    assert f"kefu is running for {SHOP}" in out, out
    assert f"agent desk:  {base.group(1)}desk#token={token.group(1)}" in out, out
    return Server(proc, base.group(1), token.group(1), log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _start_server(tmp_path_factory.mktemp("kefu") / "data")
    yield srv
    # A graceful stop lets the pages' last long polls (wait=25 s) run out first: ~25 s.
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail("kefu demo did not stop within 45 s of SIGTERM", pytrace=False)
    finally:
        if srv.proc.stdout:
            srv.proc.stdout.close()


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium package "
                    "(apt-get install chromium); they do not download browsers.", pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class PageErrors:
    """Uncaught exceptions and console errors on a page (the favicon 404 aside)."""

    def __init__(self, page: Page, name: str) -> None:
        self.name, self.seen = name, []
        page.on("pageerror", lambda exc: self.seen.append(f"uncaught: {exc}"))
        page.on("console", lambda m: self.seen.append(f"console: {m.text}")
                if m.type == "error" and "favicon" not in (m.location or {}).get("url", "") else None)

    def check(self) -> None:
        assert not self.seen, f"{self.name} page errors: {self.seen}"


def _open(browser: Browser, name: str) -> tuple[Page, PageErrors]:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    return page, PageErrors(page, name)


def _photos(tmp_path: Path) -> list[Path]:
    """Two small, different, real images: a PNG (outer box) and a JPEG (the broken cup)."""
    paths = []
    for name, fmt, colour in (("box.png", "PNG", (200, 30, 30)), ("cup.jpg", "JPEG", (30, 90, 200))):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), colour).save(buf, fmt)
        path = tmp_path / name
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def _images_loaded(page: Page, selector: str, count: int) -> None:
    """`count` images under `selector`, all actually fetched and decoded (64x48, as sent)."""
    page.wait_for_function(
        """([sel, n]) => { const imgs = [...document.querySelectorAll(sel)];
             return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth === 64 && i.naturalHeight === 48); }""",
        arg=[selector, count], timeout=WAIT_MS,
    )


# --- the story -----------------------------------------------------------------------------


def test_damaged_parcel_claim_from_chat_to_rating(server: Server, browser: Browser, tmp_path: Path) -> None:
    desk, desk_errors = _open(browser, "desk")
    buyer, buyer_errors = _open(browser, "buyer chat")
    box_png, cup_jpg = _photos(tmp_path)

    # -- The agent opens the desk from the link `kefu demo` printed: the token comes from the
    #    link (and leaves the address bar), the agent only types a name.
    desk.goto(f"{server.base}desk#token={server.token}")
    expect(desk).to_have_title(re.compile(SHOP))
    expect(desk).to_have_url(f"{server.base}desk")
    expect(desk.locator("#login")).to_be_visible()
    expect(desk.locator("#token")).to_have_value(server.token)
    desk.fill("#agent", AGENT)
    desk.locator("#login button[type=submit]").click()
    expect(desk.locator("#workspace")).to_be_visible()
    expect(desk.locator("#login")).to_be_hidden()
    expect(desk.locator("#whoami")).to_have_text(AGENT)
    expect(desk.locator(".tabs button.active")).to_have_attribute("data-status", "open")
    expect(desk.locator("#case-list")).to_contain_text("暂无工单")

    # -- The buyer opens the chat and says what happened.
    buyer.goto(server.base)
    expect(buyer).to_have_title(re.compile(SHOP))
    expect(buyer.locator("#shop")).to_have_text(SHOP)
    log = buyer.locator("#log")
    bot = log.locator(".msg.bot")
    me = log.locator(".msg.me")
    buyer.fill("#text", FIRST_SENTENCE)
    buyer.press("#text", "Enter")
    expect(me.first.locator(".bubble")).to_have_text(FIRST_SENTENCE)
    expect(me.first.locator(".who")).to_have_text("我")
    expect(buyer.locator("#text")).to_have_value("")
    greeting = bot.first
    expect(greeting.locator(".who")).to_have_text("智能客服")
    expect(greeting.locator(".bubble")).to_contain_text(f"欢迎光临{SHOP}")
    expect(greeting.locator(".buttons button")).to_have_text(["查物流", "退换货", "收到的商品有问题", "转人工"])
    ask_order = bot.filter(has_text="麻烦亲提供一下订单号")
    expect(ask_order).to_have_count(1)
    expect(ask_order).to_contain_text("16-20位数字")

    # -- A wrong order number gets a friendly re-ask.
    buyer.fill("#text", BAD_ORDER)
    buyer.locator("#send").click()
    expect(me.filter(has_text=BAD_ORDER)).to_have_count(1)
    reask = bot.filter(has_text="这个订单号好像不太对")
    expect(reask).to_have_count(1)
    expect(reask).to_contain_text("16-20位数字")
    expect(reask.locator(".buttons button")).to_have_text(["转人工"])

    # -- The right one: the bot asks for photos of the box and of the damage.
    buyer.fill("#text", ORDER)
    buyer.press("#text", "Enter")
    ask_photos = bot.filter(has_text="外包装")
    expect(ask_photos).to_have_count(1)
    expect(ask_photos).to_contain_text("破损")
    expect(ask_photos.locator(".buttons button")).to_have_text(["就这些"])

    # -- Two photos in one go: both show as thumbnails in the chat, each is acknowledged.
    buyer.set_input_files("#photo", [box_png, cup_jpg])
    _images_loaded(buyer, "#log .msg.me img", 2)
    expect(bot.filter(has_text="收到1张照片啦")).to_have_count(1)
    got_two = bot.filter(has_text="收到2张照片啦")
    expect(got_two).to_have_count(1)

    # -- 就这些: the first sentence already said what happened, so straight to the summary.
    got_two.get_by_role("button", name="就这些").click()
    expect(me.filter(has_text="就这些")).to_have_count(1)
    confirm = bot.filter(has_text="我跟您确认一下")
    expect(confirm).to_have_count(1)
    for part in ("运输破损", f"订单号：{ORDER}", "照片：2张", f"情况说明：{FIRST_SENTENCE}", "对吗"):
        expect(confirm).to_contain_text(part)
    expect(bot.filter(has_text="简单描述一下情况")).to_have_count(0)
    expect(confirm.locator(".buttons button")).to_have_text(["对，提交", "需要修改", "转人工"])

    # -- 对，提交: the case is filed.
    confirm.get_by_role("button", name="对，提交").click()
    created = bot.filter(has_text="已为您提交工单")
    expect(created).to_have_count(1)
    expect(created).to_contain_text("已为您提交工单 K1001")
    expect(created).to_contain_text("分钟内接入")  # on duty: no after-hours wording

    # -- The case shows up in the desk's 待接入 list by itself (the desk listens to the feed).
    item = desk.locator("#case-list li[data-case=K1001]")
    expect(item).to_be_visible()
    expect(item).to_contain_text("K1001 · 运输破损")
    expect(item).to_contain_text(ORDER)
    expect(desk.locator('[data-count="open"]')).to_have_text("1")

    # -- The case card: order number, description, both photos, the whole conversation.
    item.click()
    expect(item).to_have_class(re.compile(r"\bselected\b"))
    card = desk.locator("#case")
    expect(card.locator("h2")).to_contain_text("K1001 · 运输破损")
    expect(card.locator('h2 [data-field="status"]')).to_have_text("待接入")
    expect(card.locator("h2 .badge.warn")).to_have_count(0)  # the order number checked out

    def field(label: str):
        return card.locator("dl dt", has_text=re.compile(f"^{label}$")).locator("xpath=following-sibling::dd[1]")

    expect(field("订单号")).to_have_text(ORDER)
    expect(field("情况说明")).to_have_text(FIRST_SENTENCE)
    expect(field("原因")).to_have_text("售后登记")
    expect(card.locator("h3", has_text="照片")).to_have_text("照片 (2)")
    _images_loaded(desk, "#case .photos img", 2)
    transcript = card.locator(".transcript li")
    said_by_buyer = transcript.filter(has=desk.locator("strong.w-buyer"))
    for line in (FIRST_SENTENCE, BAD_ORDER, ORDER, "就这些", "对，提交"):
        expect(said_by_buyer.filter(has_text=line).first).to_be_visible()
    expect(transcript.filter(has=desk.locator("strong.w-bot")).filter(has_text="订单号好像不太对")).to_have_count(1)
    _images_loaded(desk, "#case .transcript img", 2)

    # -- The agent takes the case: the buyer is told who is helping.
    card.locator("[data-action=take]").click()
    expect(card.locator('h2 [data-field="status"]')).to_have_text("处理中")
    expect(card.locator("[data-action=take]")).to_have_count(0)
    expect(field("处理人")).to_have_text(AGENT)
    joined = bot.filter(has_text=f"您好，我是客服{AGENT}")
    expect(joined).to_have_count(1)
    expect(joined).to_contain_text("K1001")

    # -- The agent replies: the text arrives in the buyer's chat as the agent's bubble.
    card.locator("[data-input=reply]").fill(REPLY)
    card.locator("[data-action=reply]").click()
    expect(card.locator("[data-input=reply]")).to_have_value("")
    from_agent = log.locator(".msg.agent")
    expect(from_agent).to_have_count(1)
    expect(from_agent.locator(".bubble")).to_have_text(REPLY)
    expect(from_agent.locator(".who")).to_have_text(f"客服 {AGENT}")
    expect(transcript.filter(has=desk.locator("strong.w-agent")).filter(has_text=REPLY)).to_have_count(1)

    # -- The agent starts writing the resolution; meanwhile the buyer answers. The buyer's
    #    line shows up in the open card, and the half-written resolution survives that.
    resolve_box = card.locator("[data-input=resolve]")
    resolve_box.fill(SUMMARY)
    buyer.fill("#text", BUYER_FOLLOW_UP)
    buyer.press("#text", "Enter")
    expect(said_by_buyer.filter(has_text=BUYER_FOLLOW_UP)).to_have_count(1)
    expect(resolve_box).to_have_value(SUMMARY)
    expect(resolve_box).to_be_focused()
    expect(bot.filter(has_text=BUYER_FOLLOW_UP)).to_have_count(0)  # with an agent, the bot keeps quiet

    # -- Resolve: the buyer gets the summary and five rating buttons.
    card.locator("[data-action=resolve]").click()
    expect(card.locator('h2 [data-field="status"]')).to_have_text("已解决")
    expect(card.locator("[data-action=reopen]")).to_be_visible()
    expect(field("处理结果")).to_have_text(SUMMARY)
    resolved = bot.filter(has_text="已处理完成")
    expect(resolved).to_have_count(1)
    expect(resolved).to_contain_text("K1001")
    expect(resolved).to_contain_text(SUMMARY)
    expect(resolved.locator(".buttons button")).to_have_text(["⭐" * n for n in (5, 4, 3, 2, 1)])

    # -- The buyer gives five stars and is thanked; the open card shows the rating.
    resolved.get_by_role("button", name=FIVE_STARS, exact=True).click()
    expect(me.filter(has_text=FIVE_STARS)).to_have_count(1)
    thanks = bot.filter(has_text="感谢亲的评价")
    expect(thanks).to_have_count(1)
    expect(thanks).to_contain_text("5分")
    expect(field("评分")).to_have_text(f"{FIVE_STARS} 5/5")

    # -- The desk's tabs: nothing left waiting, K1001 under 已解决.
    desk.locator('.tabs button[data-status="resolved"]').click()
    expect(desk.locator("#case-list li[data-case=K1001]")).to_be_visible()
    desk.locator('.tabs button[data-status="open"]').click()
    expect(desk.locator("#case-list")).to_contain_text("暂无工单")

    # -- A reload of the chat shows the whole conversation again, in order.
    before = log.locator(".msg").count()
    buyer.reload()
    expect(log.locator(".msg")).to_have_count(before)
    expect(bot.first.locator(".bubble")).to_contain_text(f"欢迎光临{SHOP}")
    expect(me.first.locator(".bubble")).to_have_text(FIRST_SENTENCE)
    expect(log.locator(".msg").last).to_contain_text("感谢亲的评价")
    _images_loaded(buyer, "#log .msg.me img", 2)
    expect(log.locator(".msg.agent .bubble")).to_have_text(REPLY)

    expect(buyer.locator("#status")).to_be_hidden()
    buyer_errors.check()
    desk_errors.check()

    # -- The desk API agrees: resolved by the agent, rated 5; and it wants the token.
    status, case = server.desk_api("api/desk/cases/K1001")
    assert status == 200, case
    assert case["status"] == "resolved", case["status"]
    assert case["rating"] == 5, case["rating"]
    assert case["assignee"] == AGENT
    assert case["order_no"] == ORDER
    assert case["resolution"] == SUMMARY
    assert case["photo_count"] == 2
    assert [e["event"] for e in case["history"]][:2] == ["created", "taken"]
    assert "rated" in [e["event"] for e in case["history"]]
    status, body = server.desk_api("api/desk/cases/K1001", token="wrong")
    assert status == 401, body

    buyer.context.close()
    desk.context.close()
