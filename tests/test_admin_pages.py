"""The admin pages, told through HTTP as a browser would (forms, cookies, redirects), on SQLite
and on Redis: logging in, editing with validation and versions, the FAQ sheet, the misses.

These stories are about editing, not about matching: they run on the lexical router (quick to
rebuild after every save), except the misses story, which runs on the router kefu uses by default."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sys
import time
import zipfile
from html import unescape
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from yarl import URL

from bots.adminauth import COOKIE, Sessions, meta_key, verify_password
from bots.adminpages import main as hash_password_cli
from bots.app import create_app
from bots.settings import Settings, SettingsError, load_settings
from tests.conftest import Running, make_settings
from tests.support import WebBuyer, texts

PASSWORD = "xiaoman-admin-2026"
ADMIN_API = {"Authorization": "Bearer test-admin-token"}
ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_INVOICE = "本店可以开电子普通发票"


@pytest.fixture(autouse=True)
def admin_password(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kefu these tests start has an admin password (from the environment, as documented)."""
    monkeypatch.setenv("KEFU_ADMIN_PASSWORD", PASSWORD)
    if "default_router" not in request.fixturenames:
        monkeypatch.setenv("KEFU_ROUTE_METHOD", "lexical")


@pytest.fixture
def default_router() -> None:
    """Asked for by a story that should match questions as kefu does by default."""


class Admin:
    """A shop admin's browser: a cookie jar, the CSRF token of the last page, forms posted."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # 127.0.0.1 cookies
        self.csrf = ""
        self.url = ""

    async def close(self) -> None:
        await self.http.close()

    def _remember(self, text: str) -> None:
        m = re.search(r'<meta name="csrf" content="([^"]*)">', text)
        if m and m.group(1):
            self.csrf = m.group(1)

    async def get(self, path: str, expect: int | None = 200) -> str:
        async with self.http.get(self.base + path) as resp:
            text = await resp.text()
            self.url = str(resp.url)
            assert expect is None or resp.status == expect, (resp.status, text[:2000])
        self._remember(text)
        return text

    async def post(self, path: str, data: dict[str, Any] | aiohttp.FormData, expect: int | None = 200,
                   csrf: bool = True) -> str:
        if isinstance(data, dict) and csrf:
            data = {"csrf": self.csrf, **data}
        async with self.http.post(self.base + path, data=data) as resp:
            text = await resp.text()
            self.url = str(resp.url)
            self.status = resp.status
            assert expect is None or resp.status == expect, (resp.status, text[:3000])
        self._remember(text)
        return text

    async def login(self, password: str = PASSWORD, name: str = "小王", expect: int = 200) -> str:
        page = await self.get("/admin/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token, page
        return await self.post("/admin/login", {"csrf": token.group(1), "name": name, "password": password,
                                                "next": "/admin/faq"}, expect=expect, csrf=False)

    async def save_entry(self, locale: str, fid: str, expect: int = 200, **fields: Any) -> str:
        current = await self.entry(locale, fid)
        data = {"title": current["title"], "questions": "\n".join(current["questions"]),
                "answer": current["answer"], "enabled": "1", **fields}
        return await self.post(f"/admin/faq/{locale}/{fid}", data, expect=expect)

    async def entry(self, locale: str, fid: str) -> dict[str, Any]:
        page = await self.get(f"/admin/faq/{locale}/{fid}")
        title = re.search(r'id="title" name="title" type="text" value="([^"]*)"', page)
        questions = re.search(r'<textarea id="questions" name="questions"[^>]*>(.*?)</textarea>', page, re.S)
        answer = re.search(r'<textarea id="answer"[^>]*>(.*?)</textarea>', page, re.S)
        assert title and questions and answer, page
        return {"title": unescape(title.group(1)), "questions": unescape(questions.group(1)).split("\n"),
                "answer": unescape(answer.group(1))}


@pytest.fixture
async def admin(running: Running) -> AsyncIterator[Admin]:
    a = Admin(running.base)
    yield a
    await a.close()


def problems(page: str) -> list[str]:
    box = re.search(r'<div id="problems".*?</div>', page, re.S)
    return [unescape(x) for x in re.findall(r"<li[^>]*>(.*?)</li>", box.group(0), re.S)] if box else []


def report_rows(page: str) -> dict[int, tuple[str, str]]:
    """Import report: spreadsheet row -> (status, reasons)."""
    rows = {}
    for m in re.finditer(r'<tr data-row="(\d+)" data-status="(\w+)".*?</tr>', page, re.S):
        rows[int(m.group(1))] = (m.group(2), unescape(re.sub(r"<[^>]+>", " ", m.group(0))))
    return rows


async def api_source(running: Running, key: str) -> dict[str, Any]:
    async with running.http.get(f"{running.base}/api/admin/templates/{key}", headers=ADMIN_API) as resp:
        return await resp.json() if resp.status == 200 else {"status": resp.status}


async def answer_to(running: Running, question: str) -> str:
    buyer = WebBuyer(running.http, running.base)
    return texts(await buyer.say(question))


def upload(name: str, body: bytes, csrf: str, locale: str = "zh-CN") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf", csrf)
    form.add_field("locale", locale)
    form.add_field("file", body, filename=name, content_type="text/csv" if name.endswith(".csv") else "application/yaml")
    return form


# --- logging in ------------------------------------------------------------------------------


async def test_login_sessions_csrf_and_expiry(running: Running, admin: Admin) -> None:
    """A wrong password is refused slowly, the right one opens a session; forms need the session's
    CSRF token; a session ends on logout or when it expires."""
    page = await admin.get("/admin/faq")  # not logged in: off to the login page, and back after
    assert admin.url.endswith("/admin/login?next=/admin/faq")
    assert 'id="password"' in page
    started = time.monotonic()
    page = await admin.login(password="not-the-password", expect=401)
    assert time.monotonic() - started >= 0.4
    assert "密码不对" in page and "小王" in page
    # The login form has its own CSRF token: a post without it is refused.
    async with aiohttp.ClientSession() as other:
        async with other.post(running.base + "/admin/login", data={"password": PASSWORD}) as resp:
            assert resp.status == 403
    # The right password: a session cookie (HttpOnly, SameSite=Strict, Path=/admin), then the entries.
    page = await admin.get("/admin/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    async with admin.http.post(running.base + "/admin/login", allow_redirects=False, data={
            "csrf": token.group(1), "name": "小王", "password": PASSWORD, "next": "/admin/misses"}) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/admin/misses"
        cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith(f"{COOKIE}="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
        assert PASSWORD not in cookie
    page = await admin.get("/admin/faq")
    assert admin.url.endswith("/admin/faq") and "小王" in page and 'data-id="invoice"' in page
    # The store keeps the session (every web process on Redis sees it), not the password.
    sid = admin.http.cookie_jar.filter_cookies(URL(running.base + "/admin"))[COOKIE].value
    assert (await Sessions(running.kefu.store, 8).get(sid)).user == "小王"  # type: ignore[union-attr]
    assert PASSWORD not in json.dumps(await running.kefu.store.get_meta(meta_key(sid)))
    # Logging out ends it.
    await admin.post("/admin/logout", {})
    assert "/admin/login" in admin.url
    await admin.get("/admin/faq")
    assert "/admin/login" in admin.url
    assert await Sessions(running.kefu.store, 8).get(sid) is None

    # -- Every form needs the session's CSRF token: without it, or a wrong one, 403 and nothing saved.
    await admin.login()
    form = {"title": "开发票", "questions": "能开发票吗", "answer": "亲，被伪造的答案", "enabled": "1"}
    for token in ("", "forged", None):
        data = dict(form) if token is None else {**form, "csrf": token}
        await admin.post("/admin/faq/zh-CN/invoice", data, expect=403, csrf=False)
    async with admin.http.post(running.base + "/admin/preview", json={"key": "faq/zh-CN/invoice", "source": "x"}) as resp:
        assert resp.status == 403
    assert (await api_source(running, "faq/zh-CN/invoice"))["edited"] is False
    assert ORIGINAL_INVOICE in await answer_to(running, "能开发票吗")
    # -- A session past its expiry is gone: the next page asks to log in again.
    sid = admin.http.cookie_jar.filter_cookies(URL(running.base + "/admin"))[COOKIE].value
    record = json.loads(await running.kefu.store.get_meta(meta_key(sid)) or "{}")
    await running.kefu.store.set_meta(meta_key(sid), json.dumps({**record, "expires": time.time() - 1}))
    page = await admin.get("/admin/faq")
    assert "/admin/login" in admin.url and "登录已过期" in page
    await admin.post("/admin/faq/zh-CN/invoice", {**form, "csrf": record["csrf"]}, expect=403, csrf=False)


# --- editing, versions, rollback ----------------------------------------------------------------


async def test_edit_preview_refused_saves_history_and_rollback(running: Running, admin: Admin) -> None:
    await admin.login()
    page = await admin.get("/admin/faq?q=发票")
    assert 'data-id="invoice"' in page and 'data-id="coupon"' not in page
    page = await admin.get("/admin/faq/zh-CN/invoice")
    assert ORIGINAL_INVOICE in page and "{{ shop_name }}" in page  # the documented variables
    # The live preview renders with sample values, in the sandbox.
    headers = {"X-CSRF-Token": admin.csrf}
    async with admin.http.post(running.base + "/admin/preview", headers=headers, json={
            "key": "faq/zh-CN/invoice", "source": "亲，{{ shop_name }}支持开发票\n营业到{{ hours_close }}"}) as resp:
        assert await resp.json() == {"ok": True, "text": "亲，小满生活馆支持开发票\n营业到00:00", "problems": []}
    async with admin.http.post(running.base + "/admin/preview", headers=headers, json={
            "key": "faq/zh-CN/invoice", "source": "第一行\n{% if %}"}) as resp:
        body = await resp.json()
        assert body["ok"] is False and body["problems"][0]["line"] == 2 and "语法错误" in body["problems"][0]["text"]

    # Refused, with the line, and the buyer keeps getting the old answer.
    refused = {
        "亲，发票\n{% if %}坏了": ("第2行", "语法错误"),
        "{{ ''.__class__.__mro__ }}": ("第1行", "不允许的写法：__class__"),
        "{{ cycler.__init__.__globals__ }}": ("第1行", "__init__"),
        "{{ shop_name|attr('__class__') }}": ("第1行", "不允许的写法"),
        "亲，订单{{ order_no }}可以开票": ("第1行", "未知变量 order_no"),  # FAQ answers do not get order_no
    }
    for answer, (line, what) in refused.items():
        page = await admin.save_entry("zh-CN", "invoice", expect=422, answer=answer)
        shown = problems(page)
        assert shown and line in shown[0] and what in shown[0], (answer, shown)
        assert "没有保存" in page and unescape(page).count(answer) >= 1  # the admin's text is kept in the form
    assert ORIGINAL_INVOICE in await answer_to(running, "能开发票吗")
    assert (await api_source(running, "faq/zh-CN/invoice"))["edited"] is False

    # Two good saves: each one is served at once.
    await admin.save_entry("zh-CN", "invoice", answer="亲，{{ shop_name }}可以开电子发票（第一版）")
    assert "ok=saved" in admin.url
    first = int(re.search(r"v=(\d+)", admin.url).group(1))  # type: ignore[union-attr]
    assert "小满生活馆可以开电子发票（第一版）" in await answer_to(running, "能开发票吗")
    await admin.save_entry("zh-CN", "invoice", answer="亲，可以开电子发票和专票（第二版）",
                           questions="能开发票吗\n发票怎么开\n可以开专票吗")
    second = int(re.search(r"v=(\d+)", admin.url).group(1))  # type: ignore[union-attr]
    assert "（第二版）" in await answer_to(running, "能开发票吗")

    # The history: who, when, what changed (a diff against the version before).
    page = unescape(await admin.get("/admin/history/faq/zh-CN/invoice"))
    assert f'data-version="{second}"' in page and f'data-version="{first}"' in page and 'data-version="0"' in page
    assert "edit: questions, answer" in page and "edit: answer" in page and "小王" in page
    assert "+  亲，可以开电子发票和专票（第二版）" in page and "-  亲，{{ shop_name }}可以开电子发票（第一版）" in page

    # Roll back to the first version: saved as a new version, served at once.
    await admin.post("/admin/rollback/faq/zh-CN/invoice", {"version": str(first)})
    assert "ok=rolled_back" in admin.url
    assert "小满生活馆可以开电子发票（第一版）" in await answer_to(running, "能开发票吗")
    page = unescape(await admin.get("/admin/history/faq/zh-CN/invoice"))
    assert f"rollback to v{first}" in page and 'name="version" value="0"' in page  # the shipped file too
    await admin.post("/admin/rollback/faq/zh-CN/invoice", {"version": "99999"}, expect=404)


async def test_entries_are_added_disabled_deleted_and_restored(running: Running, admin: Admin) -> None:
    await admin.login()
    entry = {"locale": "zh-CN", "id": "pet_friendly", "title": "宠物用品", "enabled": "1",
             "questions": "有没有宠物用品\n卖猫砂吗\n狗狗用的东西有吗", "answer": "亲，{{ shop_name }}暂时没有宠物用品哦～"}
    page = await admin.get("/admin/faq/new?locale=zh-CN")
    await admin.post("/admin/faq/new", {**entry, "id": "Pet Friendly"}, expect=422)
    await admin.post("/admin/faq/new", entry)
    assert admin.url.split("?")[0].endswith("/admin/faq/zh-CN/pet_friendly")
    assert "小满生活馆暂时没有宠物用品" in await answer_to(running, "卖猫砂吗")
    page = await admin.post("/admin/faq/new", entry, expect=422)
    assert any("已经存在" in p for p in problems(page))

    # Disable: listed as such (with a button to enable it again), and the bot stops answering with it.
    await admin.post("/admin/faq/zh-CN/pet_friendly/toggle", {"back": "/admin/faq?locale=zh-CN"})
    page = await admin.get("/admin/faq?q=宠物")
    assert "已停用" in page and ">启用</button>" in page
    assert "暂时没有宠物用品" not in await answer_to(running, "卖猫砂吗")
    # Delete an entry that only exists as an edit: it goes.
    await admin.post("/admin/faq/zh-CN/pet_friendly/delete", {})
    assert 'data-id="pet_friendly"' not in await admin.get("/admin/faq")
    assert "暂时没有宠物用品" not in await answer_to(running, "卖猫砂吗")
    # Delete a shipped entry: kept as removed, restorable.
    await admin.post("/admin/faq/zh-CN/invoice/delete", {})
    page = await admin.get("/admin/faq?q=invoice")
    assert "已删除" in page and "/admin/faq/zh-CN/invoice/restore" in page
    assert ORIGINAL_INVOICE not in await answer_to(running, "能开发票吗")
    await admin.get("/admin/faq/zh-CN/invoice", expect=404)
    await admin.post("/admin/faq/zh-CN/invoice/restore", {})
    assert ORIGINAL_INVOICE in await answer_to(running, "能开发票吗")


async def test_the_bots_own_wording_is_edited_per_locale(running: Running, admin: Admin) -> None:
    await admin.login()
    page = await admin.get("/admin/wording?locale=zh-CN")
    assert "/admin/wording/zh-CN/greeting" in page and "/admin/labels/zh-CN" in page
    page = await admin.get("/admin/wording/zh-CN/greeting")
    assert "欢迎光临小满生活馆" in page  # the preview, rendered with the shop's name
    # The greeting is given no case id: refused with the line, the old one keeps greeting.
    page = await admin.post("/admin/wording/zh-CN/greeting", {"source": "亲，欢迎！\n工单{{ case_id }}"}, expect=422)
    assert "第2行" in problems(page)[0] and "case_id" in problems(page)[0]
    await admin.post("/admin/wording/zh-CN/greeting", {"source": "亲，{{ shop_name }}欢迎您（新版欢迎语）～"})
    assert "小满生活馆欢迎您（新版欢迎语）" in await answer_to(running, "你好")
    en = await answer_to(running, "hello there")
    assert "新版欢迎语" not in en  # the English greeting is its own
    # Labels are YAML: a broken file is refused with its line.
    labels = await admin.get("/admin/labels/zh-CN")
    assert "admin:" in unescape(labels)
    page = await admin.post("/admin/labels/zh-CN", {"source": "buttons:\n  human: [转人工\n"}, expect=422)
    assert problems(page)
    # Back to the file.
    await admin.post("/admin/wording/zh-CN/greeting/reset", {})
    assert "ok=reset" in admin.url
    assert "欢迎光临小满生活馆" in await answer_to(running, "你好")


# --- the FAQ sheet -------------------------------------------------------------------------------


async def test_importing_the_yaml_sheet_reports_each_entry_and_a_second_import_changes_nothing(
        running: Running, admin: Admin) -> None:
    await admin.login()
    await admin.get("/admin/sheet")
    sheet = (Path("/work/shared/eval/faq.yaml") if Path("/work/shared/eval/faq.yaml").exists()
             else ROOT / "tests" / "missing.yaml")
    raw = sheet.read_bytes()
    n = len(yaml.safe_load(raw)["faqs"])
    page = await admin.post("/admin/import", upload("faq.yaml", raw, admin.csrf))
    rows = report_rows(page)
    assert len(rows) == n and all(s in ("added", "changed") for s, _ in rows.values()), rows
    assert rows[10][0] == "changed" and "invoice" in rows[10][1]  # the sheet's own invoice answer
    assert "导入完成" in page and "intents" in page  # the intents section is left out, and said so
    assert (await api_source(running, "faq/zh-CN/ship_when"))["edited"] is True
    assert "电子普通发票，发票随货一起" in await answer_to(running, "发票怎么开")
    version = await running.kefu.store.config_version()
    page = await admin.post("/admin/import", upload("faq.yaml", raw, admin.csrf))
    assert {s for s, _ in report_rows(page).values()} == {"unchanged"} and "没有需要修改" in page
    assert await running.kefu.store.config_version() == version


def csv_bytes(rows: list[list[str]], bom: bool = True) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "title", "questions", "answer"], *rows])
    return buf.getvalue().encode("utf-8-sig" if bom else "utf-8")


async def test_a_csv_import_is_all_or_nothing_and_names_the_bad_rows(running: Running, admin: Admin) -> None:
    await admin.login()
    await admin.get("/admin/sheet")
    good = ["gift_card", "礼品卡", "有礼品卡吗\n能买购物卡吗|可以送礼品卡吗", "亲，{{ shop_name }}暂不支持礼品卡哦～"]
    changed = ["invoice", "开发票", "能开发票吗|发票怎么开", "亲，发票在订单页申请即可（表格版）"]
    version = await running.kefu.store.config_version()
    body = csv_bytes([good, ["bad_tpl", "坏模板", "问题", "亲，{% if %}"], ["Bad-Id", "坏编号", "问题", "答案"],
                      changed, ["gift_card", "重复", "问题", "答案"], ["", "", "", ""]])
    page = await admin.post("/admin/import", upload("faq.csv", body, admin.csrf), expect=422)
    rows = report_rows(page)
    assert "没有导入任何内容" in page
    assert rows[3][0] == "rejected" and "第3行" in rows[3][1] and "语法错误" in rows[3][1] and "第1行" in rows[3][1]
    assert rows[4][0] == "rejected" and "Bad-Id" in rows[4][1]
    assert rows[6][0] == "rejected" and "与第2行的编号重复" in rows[6][1]
    assert rows[2][0] == "added" and rows[5][0] == "changed" and 7 not in rows  # the blank row is skipped
    assert await running.kefu.store.config_version() == version  # nothing stored
    assert (await api_source(running, "faq/zh-CN/gift_card")) == {"status": 404}
    assert ORIGINAL_INVOICE in await answer_to(running, "能开发票吗")

    # Fixed: every row applied at once (one version), the per-row report says what happened.
    page = await admin.post("/admin/import", upload("faq.csv", csv_bytes([good, changed]), admin.csrf))
    assert {r: s for r, (s, _) in report_rows(page).items()} == {2: "added", 3: "changed"}
    assert await running.kefu.store.config_version() == version + 1
    assert "（表格版）" in await answer_to(running, "能开发票吗")
    entry = yaml.safe_load((await api_source(running, "faq/zh-CN/gift_card"))["source"])
    assert entry["questions"] == ["有礼品卡吗", "能买购物卡吗", "可以送礼品卡吗"]

    # What Excel on a Chinese Windows writes by default (GBK), and a sheet without the answer column.
    page = await admin.post("/admin/import", upload("faq.csv", csv_bytes([good], bom=False).decode().encode("gbk"),
                                                    admin.csrf), expect=422)
    assert "CSV UTF-8" in page
    page = await admin.post("/admin/import", upload("faq.csv", b"id,title,questions\nx1,t,q\n", admin.csrf), expect=422)
    assert "缺少列：answer" in page


async def test_export_round_trips_and_the_zip_carries_the_edits(running: Running, admin: Admin) -> None:
    await admin.login()
    await admin.save_entry("zh-CN", "coupon", answer="亲，优惠券在结算页自动抵扣（导出测试）")
    await admin.post("/admin/faq/zh-CN/wholesale/delete", {})
    async with admin.http.get(running.base + "/admin/export/faq.csv?locale=zh-CN") as resp:
        assert resp.status == 200 and "attachment" in resp.headers["Content-Disposition"]
        exported_csv = await resp.read()
    assert exported_csv.startswith("\ufeff".encode()) and "（导出测试）".encode() in exported_csv
    assert b"wholesale" not in exported_csv
    async with admin.http.get(running.base + "/admin/export/faq.yaml?locale=zh-CN") as resp:
        exported_yaml = await resp.read()
    doc = yaml.safe_load(exported_yaml)
    assert doc["shop"] == "小满生活馆" and len(doc["faqs"]) >= 20
    coupon = next(f for f in doc["faqs"] if f["id"] == "coupon")
    assert "（导出测试）" in coupon["answer"]
    version = await running.kefu.store.config_version()
    await admin.get("/admin/sheet")
    for name, raw in (("faq.csv", exported_csv), ("faq.yaml", exported_yaml)):
        page = await admin.post("/admin/import", upload(name, raw, admin.csrf))
        assert {s for s, _ in report_rows(page).values()} == {"unchanged"}, name
    assert await running.kefu.store.config_version() == version
    async with admin.http.get(running.base + "/admin/export/templates.zip") as resp:
        zf = zipfile.ZipFile(io.BytesIO(await resp.read()))
    names = set(zf.namelist())
    assert "templates/faq/zh-CN/coupon.yaml" in names and "templates/faq/zh-CN/wholesale.yaml" not in names
    assert "templates/faq/en/wholesale.yaml" in names and "templates/intents/zh-CN.yaml" in names
    assert "（导出测试）" in zf.read("templates/faq/zh-CN/coupon.yaml").decode()
    assert zf.read("templates/messages/zh-CN/greeting.j2") == (ROOT / "templates/messages/zh-CN/greeting.j2").read_bytes()


# --- misses --------------------------------------------------------------------------------------


async def missed(running: Running, admin: Admin, question: str) -> str:
    """A buyer asks something the bot cannot answer; the admin opens the misses page."""
    buyer = WebBuyer(running.http, running.base)
    await buyer.say("你好")
    await buyer.say(question)
    await admin.login()
    return await admin.get("/admin/misses")


async def test_a_missed_question_is_listed_and_one_click_makes_it_answered(
        default_router: None, running: Running, admin: Admin) -> None:
    question = "zxqv blorp 比特币"
    page = await missed(running, admin, question)
    m = re.search(r'<tr data-norm="([^"]+)">\s*<td class="question">' + re.escape(question), page)
    assert m, page
    norm = unescape(m.group(1))
    # "New entry" starts from the question.
    link = re.search(r'href="(/admin/faq/new\?[^"]+)"', page)
    assert link and question in unescape(await admin.get(unescape(link.group(1))))
    # One click adds it to an entry's examples: the bot answers it from then on, and it leaves the list.
    await admin.post("/admin/misses/add", {"norm": norm, "question": question, "locale": "zh-CN", "faq": "cod"})
    assert "ok=example_added" in admin.url and question not in await admin.get("/admin/misses")
    entry = yaml.safe_load((await api_source(running, "faq/zh-CN/cod"))["source"])
    assert entry["questions"][-1] == question
    cod = entry["answer"].strip()[:12]
    assert cod in texts(await WebBuyer(running.http, running.base).say(question))


async def test_a_miss_about_a_topic_the_shop_lacks_starts_a_new_entry_from_that_topic(
        default_router: None, running: Running, admin: Admin) -> None:
    """kefu's sample shop has no entry about a physical store; its phrasing bank has the topic."""
    question = "你们有线下门店吗 想去看看实物"
    page = await missed(running, admin, question)
    row = page[page.index(question):]
    row = row[:row.index("</tr>")]
    assert 'data-topic="store"' in row and "本店还没有条目" in row, row
    link = re.search(r'href="(/admin/faq/new\?[^"]+)"', row)
    assert link and "topic=store" in link.group(1)
    form = unescape(await admin.get(unescape(link.group(1))))
    assert question in form and "实体店与自提" in form and "可以自提吗" in form


async def test_an_entry_page_shows_the_bank_topic_it_is_linked_to(
        default_router: None, running: Running, admin: Admin) -> None:
    await admin.login()
    page = unescape(await admin.get("/admin/faq/zh-CN/cod"))
    block = page[page.index('id="bank-links"'):]
    block = block[:block.index("</div>\n    </div>") if "</div>\n    </div>" in block else 600]
    assert 'data-topic="cod"' in block and "也能听懂" in block and "货到付款" in block, block


# --- without a password, and with a hash ----------------------------------------------------------


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(settings: Settings) -> str:
        server = TestServer(await create_app(settings))
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def test_without_a_password_the_pages_say_how_to_enable_them(
        serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEFU_ADMIN_PASSWORD")
    base = await serve(make_settings(tmp_path / "data"))
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/admin"), ("GET", "/admin/login"), ("POST", "/admin/login"),
                             ("GET", "/admin/faq/zh-CN/invoice")):
            async with http.request(method, base + path) as resp:
                text = await resp.text()
                assert resp.status == 503 and "管理后台未启用" in text and "hash-password" in text, path
        async with http.get(base + "/api/admin/templates", headers=ADMIN_API) as resp:
            assert resp.status == 200  # the bearer-token API is separate


async def test_a_password_hash_from_the_cli_logs_in_and_plain_passwords_stay_out_of_files(
        serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bots.adminpages", "hash-password", cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(b"another-secret-9\n")
    assert proc.returncode == 0, err
    encoded = out.decode().strip()
    assert encoded.startswith("scrypt$") and "another-secret-9" not in encoded
    assert verify_password("another-secret-9", encoded) and not verify_password("another-secret", encoded)
    monkeypatch.delenv("KEFU_ADMIN_PASSWORD")
    monkeypatch.setenv("KEFU_ADMIN_PASSWORD_HASH", encoded)
    base = await serve(make_settings(tmp_path / "data"))
    admin = Admin(base)
    try:
        await admin.login(password=PASSWORD, expect=401)
        await admin.login(password="another-secret-9")
        assert admin.url.endswith("/admin/faq")
    finally:
        await admin.close()
    monkeypatch.setenv("KEFU_ADMIN_PASSWORD_HASH", "md5$abc")
    with pytest.raises(SettingsError, match="admin_password_hash"):
        load_settings()
    monkeypatch.delenv("KEFU_ADMIN_PASSWORD_HASH")
    toml = tmp_path / "kefu.toml"
    toml.write_text('admin_password = "in-a-file"\n', "utf-8")
    with pytest.raises(SettingsError, match="environment"):
        load_settings(toml)
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert hash_password_cli(["hash-password"]) == 1  # too short to be a password


def test_the_admin_wording_exists_in_both_languages() -> None:
    groups = [yaml.safe_load((ROOT / f"templates/messages/{loc}/labels.yaml").read_text("utf-8"))["admin"]
              for loc in ("zh-CN", "en")]
    assert set(groups[0]) == set(groups[1])
    for group in groups:
        for key, value in group.items():
            assert isinstance(value, str), key
