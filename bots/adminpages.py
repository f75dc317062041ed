"""The admin pages at /admin: log in, FAQ entries (list, search, edit, add, disable, delete), the
bot's own wording per locale, every version with its diff and a rollback, a live preview; the
FAQ sheet's import and export and the misses page are in bots/adminsheet.py.

    GET  /admin/login, POST /admin/login, POST /admin/logout
    GET  /admin/faq?locale=&q=                 entries, searchable
    GET  /admin/faq/new, POST /admin/faq/new   a new entry (?question=… from the misses page)
    GET  /admin/faq/{locale}/{id}, POST …      edit title, example questions, answer, buttons, on/off
    POST /admin/faq/{locale}/{id}/toggle|delete|restore
    GET  /admin/wording?locale=, GET|POST /admin/wording/{locale}/{name}, POST …/reset
    GET|POST /admin/labels/{locale}, POST …/reset
    GET  /admin/history/{key}, POST /admin/rollback/{key}
    POST /admin/preview                        JSON {key, source} -> {ok, text} or {ok: false, problems}

Every POST needs the session cookie and its CSRF token (form field `csrf` or header X-CSRF-Token).

    python -m bots.adminpages hash-password     # reads a password on stdin, prints admin_password_hash
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import sys
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web
from multidict import MultiDictProxy

from bots.adminauth import COOKIE, COOKIE_PATH, LOGIN_COOKIE, LoginThrottle, Session, hash_password, verify_password
from bots.adminsheet import SheetPages
from bots.adminsite import FAQ_ID, HEADERS, NAME, WEB, AdminSite, edit_url
from bots.editor import Rejected
from bots.faqsheet import entry_source, load_yaml, parse_entry, split_questions
from bots.http import json_response
from bots.tplcheck import Problem, allowed_variables, check_template
from handlers.bank import starter_questions
from handlers.wording import SAMPLE_VARS, valid_key

if TYPE_CHECKING:
    from bots.app import Kefu

STATIC = {"admin.css": "text/css", "admin.js": "application/javascript"}
MAX_SOURCE = 64 * 1024
FIELDS = ("title", "questions", "answer", "buttons", "enabled")


class AdminPages(AdminSite):
    def __init__(self, kefu: "Kefu", password_hash: str | None) -> None:
        super().__init__(kefu, password_hash)
        self.throttle = LoginThrottle()
        self.sheet = SheetPages(self)

    @classmethod
    async def start(cls, kefu: "Kefu") -> "AdminPages":
        """A configured hash wins; a plain password (environment only) is hashed here, in memory."""
        s = kefu.settings
        encoded = s.admin_password_hash
        if encoded is None and s.admin_password is not None:
            encoded = await asyncio.to_thread(hash_password, s.admin_password.get_secret_value())

        def saved(version: int) -> None:
            # The editor reloads this process itself: the app's content watcher would load it a second time.
            kefu.config_version = max(kefu.config_version, version)

        kefu.admin.editor.on_saved = saved
        return cls(kefu, encoded)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin", self.home),
            web.get("/admin/", self.home),
            web.get("/admin/static/{name}", self.static),
            web.get("/admin/login", self.login_page),
            web.post("/admin/login", self.login),
            web.post("/admin/logout", self.logout),
            web.get("/admin/faq", self.faq_list),
            web.get("/admin/faq/new", self.faq_new),
            web.post("/admin/faq/new", self.faq_create),
            web.get("/admin/faq/{locale}/{id}", self.faq_edit),
            web.post("/admin/faq/{locale}/{id}", self.faq_save),
            web.post("/admin/faq/{locale}/{id}/{action:toggle|delete|restore}", self.faq_action),
            web.get("/admin/wording", self.wording_list),
            web.get("/admin/wording/{locale}/{name}", self.source_edit),
            web.post("/admin/wording/{locale}/{name}", self.source_save),
            web.post("/admin/wording/{locale}/{name}/reset", self.source_reset),
            web.get("/admin/labels/{locale}", self.source_edit),
            web.post("/admin/labels/{locale}", self.source_save),
            web.post("/admin/labels/{locale}/reset", self.source_reset),
            web.get("/admin/history/{key:.+}", self.history),
            web.post("/admin/rollback/{key:.+}", self.rollback),
            web.post("/admin/preview", self.preview),
            *self.sheet.routes(),
        ]

    # --- basics --------------------------------------------------------------------------------
    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB / name, headers={"Content-Type": STATIC[name], "Cache-Control": "no-cache"})

    async def home(self, request: web.Request) -> web.Response:
        await self.require(request)
        self.see_other("/admin/faq")

    # --- logging in ------------------------------------------------------------------------------
    def _next(self, value: Any) -> str:
        target = str(value or "")
        ok = target.startswith("/admin") and not target.startswith("//") and "\\" not in target and "\n" not in target
        return target if ok and not target.startswith("/admin/login") else "/admin/faq"

    def _login_form(self, request: web.Request, status: int = 200, error: str = "", name: str = "") -> web.Response:
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        t = self.labels()
        notice = t["session_expired"] if request.query.get("expired") else (t["logged_out"] if request.query.get("bye") else "")
        resp = self.render("admin_login.html", status=status, title=t["login_title"], login_csrf=token, error=error,
                           notice=notice, name=name, next=self._next(request.query.get("next")))
        resp.set_cookie(LOGIN_COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="Strict",
                        secure=self.secure_cookies, max_age=3600)
        return resp

    async def login_page(self, request: web.Request) -> web.Response:
        if not self.enabled:
            self._disabled()
        if await self.session(request) is not None:
            self.see_other(self._next(request.query.get("next")))
        return self._login_form(request)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not self.enabled or self.password_hash is None:
            self._disabled()
        form = await request.post()
        if not self.same(str(form.get("csrf") or ""), request.cookies.get(LOGIN_COOKIE, "")):
            self.fail(403, self.labels()["csrf_failed"])
        name = " ".join(str(form.get("name") or "").split())[:40] or "admin"
        password = str(form.get("password") or "")
        who = request.remote or "?"
        if not password or not await asyncio.to_thread(verify_password, password, self.password_hash):
            await asyncio.sleep(self.throttle.failed(who))  # wrong guesses cost time
            return self._login_form(request, 401, self.labels()["login_failed"], name)
        self.throttle.succeeded(who)
        sid, _ = await self.sessions.start(name)
        resp = web.HTTPSeeOther(self._next(form.get("next")), headers=HEADERS)
        self.set_session_cookie(resp, sid)
        resp.del_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
        raise resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self.require_post(request)
        await self.sessions.end(request.cookies.get(COOKIE))
        resp = web.HTTPSeeOther("/admin/login?bye=1", headers=HEADERS)
        resp.del_cookie(COOKIE, path=COOKIE_PATH)
        raise resp

    # --- FAQ entries -------------------------------------------------------------------------------
    def _locale(self, request: web.Request) -> str:
        loc = request.match_info.get("locale") or request.query.get("locale") or self.ctx.wording.default_locale
        if not self.known_locale(loc):
            raise web.HTTPNotFound(headers=HEADERS)
        return loc

    async def faq_list(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        locale = self._locale(request)
        q = request.query.get("q", "").strip()[:100]
        snap = await self.editor.snapshot()
        entries = await asyncio.to_thread(snap.faq_entries, locale, True)
        if q:
            needle = q.lower()
            entries = [e for e in entries if needle in " ".join(
                [e["id"], e["title"], e["answer"], *e["questions"]]).lower()]
        return self.render("admin_faq_list.html", session=session, request=request, nav="faq",
                           title=self.labels()["nav_faq"], locale=locale, locales=self.locales(), q=q, entries=entries)

    def _buttons(self, locale: str) -> list[tuple[str, str]]:
        w = self.ctx.wording
        payloads = w.labels.get(w.default_locale, {}).get("buttons", {})
        return [(p, w.label("buttons", p, locale)) for p in payloads]

    def _faq_page(self, request: web.Request, session: Session, locale: str, entry: dict[str, Any], *, new: bool,
                  problems: list[Problem] | None = None, status: int = 200, miss: str = "") -> web.Response:
        key = f"faq/{locale}/{entry.get('id') or 'new'}"
        return self.render(
            "admin_faq_edit.html", status=status, session=session, request=request, nav="faq",
            title=entry.get("title") or self.labels()["new_entry"], locale=locale, entry=entry, new=new, key=key,
            problems=problems or [], buttons=self._buttons(locale), miss=miss,
            bank=None if new else self._bank_links(str(entry.get("id") or ""), locale),
            variables=self._variables(sorted(allowed_variables("faq/x/x", {}))),
            preview=self._initial_preview(key, entry.get("answer") or "") if not problems else None,
        )

    def _bank_links(self, fid: str, locale: str) -> list[dict[str, Any]] | None:
        """The phrasing-bank topics the router linked this entry to (None: no bank in use)."""
        router = self.ctx.router
        bank = getattr(router, "bank", None)
        if not bank:
            return None
        out = []
        for tid in getattr(router, "links", {}).get(fid, []):
            topic = bank[tid]
            out.append({"id": tid, "title": topic.en if locale == "en" and topic.en else topic.title,
                        "count": len(topic.phrasings), "examples": starter_questions(topic, locale, 4)})
        return out

    def _variables(self, names: list[str]) -> list[tuple[str, str, str]]:
        t = self.labels()
        values = self.editor.sample_values()
        return [(n, t.get(f"var_{n}", ""), _sample(values.get(n))) for n in names]

    def _initial_preview(self, key: str, source: str) -> str | None:
        if not source.strip():
            return None
        text, problems = check_template(source, allowed_variables(key, {}) if key.startswith("faq/") else set(SAMPLE_VARS),
                                        self.editor.sample_values())
        return text if not problems else None

    async def _entry(self, request: web.Request) -> tuple[str, str, dict[str, Any] | None, Any]:
        locale = self._locale(request)
        fid = request.match_info["id"]
        if not FAQ_ID.match(fid):
            raise web.HTTPNotFound(headers=HEADERS)
        snap = await self.editor.snapshot()
        key = f"faq/{locale}/{fid}"
        return locale, key, parse_entry(snap.source(key)), snap

    async def faq_edit(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        locale, key, entry, _ = await self._entry(request)
        if entry is None:
            self.fail(404, self.labels()["no_such_entry"], session)
        return self._faq_page(request, session, locale, entry, new=False)

    async def faq_new(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        locale = self._locale(request)
        question = request.query.get("question", "").strip()[:500]
        questions = [question] if question else []
        entry: dict[str, Any] = {"id": "", "title": "", "questions": questions, "answer": "", "buttons": [],
                                 "enabled": True}
        topic = getattr(self.ctx.router, "bank", {}).get(request.query.get("topic", ""))
        if topic is not None:  # a miss about a phrasing-bank topic the shop has no entry for
            entry["id"] = topic.id if FAQ_ID.match(topic.id) else ""
            entry["title"] = topic.en if locale == "en" and topic.en else topic.title
            entry["questions"] = list(dict.fromkeys([*questions, *starter_questions(topic, locale)]))
        return self._faq_page(request, session, locale, entry, new=True, miss=request.query.get("miss", "")[:200])

    def _form_entry(self, form: MultiDictProxy[Any], fid: str, locale: str) -> tuple[dict[str, Any], list[Problem]]:
        known = {p for p, _ in self._buttons(locale)}
        entry = {
            "id": fid,
            "title": " ".join(str(form.get("title") or "").split())[:200],
            "questions": split_questions(str(form.get("questions") or "")),
            "answer": str(form.get("answer") or "").replace("\r\n", "\n").strip()[:MAX_SOURCE],
            "buttons": [b for b in form.getall("buttons", []) if isinstance(b, str) and b in known],
            "enabled": form.get("enabled") == "1",
        }
        problems = [Problem("required", self.labels()[f"field_{f}"], field=f)
                    for f in ("title", "questions", "answer") if not entry[f]]
        return entry, problems

    async def _save_entry(self, request: web.Request, session: Session, locale: str, entry: dict[str, Any],
                          before: dict[str, Any] | None, problems: list[Problem], *, new: bool,
                          miss: str = "") -> web.Response:
        key = f"faq/{locale}/{entry['id']}"
        if not problems:
            changed = [f for f in FIELDS if before is None or before.get(f) != entry.get(f)]
            if not changed:
                self.see_other(f"/admin/faq/{locale}/{entry['id']}?ok=unchanged")
            note = "new entry" if before is None else "edit: " + ", ".join(changed)
            try:
                version = await self.editor.save({key: entry_source(entry)}, author=session.user, note=note)
            except Rejected as exc:
                problems = exc.problems
            else:
                if miss:
                    await self.store.dismiss_miss(miss)
                self.see_other(f"/admin/faq/{locale}/{entry['id']}?ok=saved&v={version}")
        return self._faq_page(request, session, locale, entry, new=new, problems=problems, status=422, miss=miss)

    async def faq_save(self, request: web.Request) -> web.Response:
        session, form = await self.require_post(request)
        locale, key, before, _ = await self._entry(request)
        if before is None:
            self.fail(404, self.labels()["no_such_entry"], session)
        entry, problems = self._form_entry(form, before["id"], locale)
        return await self._save_entry(request, session, locale, entry, before, problems, new=False)

    async def faq_create(self, request: web.Request) -> web.Response:
        session, form = await self.require_post(request)
        locale = str(form.get("locale") or "")
        if not self.known_locale(locale):
            self.fail(400, self.labels()["bad_locale"], session)
        fid = str(form.get("id") or "").strip()
        entry, problems = self._form_entry(form, fid, locale)
        if not FAQ_ID.match(fid):
            problems.insert(0, Problem("id", fid, field="id"))
        else:
            snap = await self.editor.snapshot()
            if snap.source(f"faq/{locale}/{fid}") is not None:
                problems.insert(0, Problem("exists", fid, field="id"))
        return await self._save_entry(request, session, locale, entry, None, problems, new=True,
                                      miss=str(form.get("miss") or "")[:200])

    async def faq_action(self, request: web.Request) -> web.Response:
        session, form = await self.require_post(request)
        locale, key, entry, snap = await self._entry(request)
        action = request.match_info["action"]
        back = f"/admin/faq?locale={locale}"
        change: str | None
        if action == "restore":
            if not snap.removed(key) or key not in snap.files:
                self.fail(404, self.labels()["no_such_entry"], session)
            change, note, ok = None, "restore from file", "restored"
        elif entry is None:
            self.fail(404, self.labels()["no_such_entry"], session)
        elif action == "toggle":
            entry["enabled"] = not entry["enabled"]
            change, note, ok = entry_source(entry), "enable" if entry["enabled"] else "disable", \
                "enabled" if entry["enabled"] else "disabled"
            back = str(form.get("back") or back)
        else:  # delete: a file's entry is kept removed by an empty edit; an edit-only entry goes
            change, note, ok = ("" if key in snap.files else None), "delete", "deleted"
        try:
            version = await self.editor.save({key: change}, author=session.user, note=note)
        except Rejected as exc:
            self.fail(409, "; ".join(self.problem_text(p) for p in exc.problems), session)
        target = back if back.startswith("/admin/") and not back.startswith("//") else "/admin/faq"
        self.see_other(f"{target}{'&' if '?' in target else '?'}ok={ok}&v={version}")

    # --- the bot's own wording and labels ------------------------------------------------------------
    async def wording_list(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        locale = self._locale(request)
        snap = await self.editor.snapshot()
        items = []
        for key in snap.keys(f"messages/{locale}/"):
            source = snap.source(key) or ""
            first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
            items.append({"key": key, "name": key.rsplit("/", 1)[-1], "first": first[:80],
                          "edited": snap.edited(key)})
        labels_key = f"labels/{locale}"
        return self.render("admin_wording_list.html", session=session, request=request, nav="wording",
                           title=self.labels()["nav_wording"], locale=locale, locales=self.locales(), items=items,
                           labels_key=labels_key, labels_edited=snap.edited(labels_key))

    def _source_key(self, request: web.Request) -> str:
        locale = self._locale(request)
        name = request.match_info.get("name")
        if name is None:
            return f"labels/{locale}"
        if not NAME.match(name):
            raise web.HTTPNotFound(headers=HEADERS)
        return f"messages/{locale}/{name}"

    def _source_page(self, request: web.Request, session: Session, key: str, source: str, edited: bool,
                     files: dict[str, str], problems: list[Problem] | None = None, status: int = 200) -> web.Response:
        is_labels = key.startswith("labels/")
        names = [] if is_labels else sorted(allowed_variables(key, files))
        return self.render("admin_source_edit.html", status=status, session=session, request=request, nav="wording",
                           title=key, key=key, locale=key.split("/")[1], source=source, edited=edited,
                           from_file=key in files, is_labels=is_labels, problems=problems or [],
                           variables=self._variables(names),
                           preview=None if is_labels or problems else _preview_text(self, key, source, files))

    async def source_edit(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        key = self._source_key(request)
        snap = await self.editor.snapshot()
        source = snap.source(key)
        if source is None:
            self.fail(404, self.labels()["no_such_template"], session)
        return self._source_page(request, session, key, source, snap.edited(key), snap.files)

    async def source_save(self, request: web.Request) -> web.Response:
        session, form = await self.require_post(request)
        key = self._source_key(request)
        snap = await self.editor.snapshot()
        if snap.source(key) is None:
            self.fail(404, self.labels()["no_such_template"], session)
        source = str(form.get("source") or "").replace("\r\n", "\n")[:MAX_SOURCE]
        if not source.strip():
            problems = [Problem("required", self.labels()["field_source"], field="source")]
        elif source == snap.source(key):
            self.see_other(f"{edit_url(key)}?ok=unchanged")
        else:
            try:
                version = await self.editor.save({key: source}, author=session.user, note="edit")
            except Rejected as exc:
                problems = exc.problems
            else:
                self.see_other(f"{edit_url(key)}?ok=saved&v={version}")
        return self._source_page(request, session, key, source, snap.edited(key), snap.files, problems, 422)

    async def source_reset(self, request: web.Request) -> web.Response:
        session, _ = await self.require_post(request)
        key = self._source_key(request)
        snap = await self.editor.snapshot()
        if not snap.edited(key) or key not in snap.files:
            self.see_other(f"{edit_url(key)}?ok=unchanged")
        try:
            version = await self.editor.save({key: None}, author=session.user, note="back to the file")
        except Rejected as exc:
            self.fail(409, "; ".join(self.problem_text(p) for p in exc.problems), session)
        self.see_other(f"{edit_url(key)}?ok=reset&v={version}")

    # --- versions ------------------------------------------------------------------------------------
    def _key(self, request: web.Request) -> str:
        key = request.match_info["key"]
        if not valid_key(key) or edit_url(key) is None:
            raise web.HTTPNotFound(headers=HEADERS)
        return key

    async def history(self, request: web.Request) -> web.Response:
        session = await self.require(request)
        key = self._key(request)
        versions = await self.editor.history(key)
        return self.render("admin_history.html", session=session, request=request,
                           nav="wording" if not key.startswith("faq/") else "faq",
                           title=f"{self.labels()['history']} · {key}", key=key, versions=versions,
                           back=edit_url(key), problems=[])

    async def rollback(self, request: web.Request) -> web.Response:
        session, form = await self.require_post(request)
        key = self._key(request)
        try:
            version = int(str(form.get("version") or ""))
            new = await self.editor.rollback(key, version, session.user)
        except (ValueError, KeyError):
            self.fail(404, self.labels()["no_such_version"], session)
        except Rejected as exc:
            return self.render("admin_history.html", status=422, session=session, request=request, nav="faq",
                               title=f"{self.labels()['history']} · {key}", key=key,
                               versions=await self.editor.history(key), back=edit_url(key), problems=exc.problems)
        self.see_other(f"/admin/history/{key}?ok=rolled_back&v={new}")

    # --- live preview ------------------------------------------------------------------------------
    async def preview(self, request: web.Request) -> web.Response:
        await self.require_json(request)
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(headers=HEADERS) from None
        key, source = str(body.get("key") or ""), body.get("source")
        if not isinstance(source, str) or len(source) > MAX_SOURCE or not valid_key(key):
            raise web.HTTPBadRequest(headers=HEADERS)
        snap = await self.editor.snapshot()
        if key.startswith("labels/"):
            problems = _yaml_problems(source)
            text: str | None = "" if not problems else None
        else:
            text, problems = await asyncio.to_thread(
                check_template, source, allowed_variables(key, snap.files), self.editor.sample_values())
        return json_response({"ok": not problems, "text": text,
                              "problems": [{"line": p.line, "text": self.problem_text(p)} for p in problems]})


def _preview_text(site: AdminSite, key: str, source: str, files: dict[str, str]) -> str | None:
    text, problems = check_template(source, allowed_variables(key, files), site.editor.sample_values())
    return text if not problems else None


def _yaml_problems(source: str) -> list[Problem]:
    try:
        data = load_yaml(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [Problem("yaml", str(getattr(exc, "problem", "") or exc), mark.line + 1 if mark else None)]
    if not isinstance(data, dict):
        return [Problem("yaml", "a mapping of label groups")]
    return []


def _sample(value: Any) -> str:
    if callable(value):
        return "…"
    text = str(value)
    return text if len(text) <= 40 else text[:40] + "…"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["hash-password"]:
        print("usage: python -m bots.adminpages hash-password   (reads the password from stdin)", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("admin password: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main())
