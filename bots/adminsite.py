"""What every admin page shares: rendering (Jinja2 with autoescape, wording from the `admin`
label group), the session and CSRF checks, security headers, links between pages."""

from __future__ import annotations

import hmac
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from multidict import MultiDictProxy

from bots.adminauth import COOKIE, COOKIE_PATH, Session, Sessions
from bots.editor import Editor
from bots.faqsheet import SheetError
from bots.tplcheck import Problem

if TYPE_CHECKING:
    from bots.app import Kefu

WEB = Path(__file__).resolve().parent / "web"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'; object-src 'none'",
}
LOCALE_RE = re.compile(r"^[A-Za-z\-]{2,10}$")
FAQ_ID = re.compile(r"^[a-z0-9_]{2,40}$")
NAME = re.compile(r"^[a-z0-9_]{1,64}$")


def edit_url(key: str) -> str | None:
    """The page that edits a template key."""
    kind, _, rest = key.partition("/")
    loc, _, name = rest.partition("/")
    if kind == "faq":
        return f"/admin/faq/{loc}/{name}"
    if kind == "messages":
        return f"/admin/wording/{loc}/{name}"
    if kind == "labels":
        return f"/admin/labels/{loc}"
    return None


class AdminSite:
    def __init__(self, kefu: "Kefu", password_hash: str | None) -> None:
        self.kefu = kefu
        self.settings = kefu.settings
        self.store = kefu.store
        self.editor: Editor = kefu.admin.editor
        self.password_hash = password_hash
        self.sessions = Sessions(kefu.store, self.settings.admin_session_hours)
        self.env = Environment(loader=FileSystemLoader(WEB), autoescape=select_autoescape(["html"]),
                               undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["when"] = self.when
        self.env.filters["problem"] = self.problem_text
        self.env.filters["urlq"] = lambda v: quote(str(v), safe="")
        self.env.globals["edit_url"] = edit_url
        self.secure_cookies = self.settings.public_url.startswith("https://")

    @property
    def enabled(self) -> bool:
        return self.password_hash is not None

    @property
    def ctx(self) -> Any:
        return self.kefu.ctx

    # --- wording -------------------------------------------------------------------------------
    @property
    def locale(self) -> str:
        return self.settings.admin_locale

    def labels(self) -> dict[str, str]:
        w = self.ctx.wording
        keys = w.labels.get(w.default_locale, {}).get("admin", {}).keys()
        return {k: w.label("admin", k, self.locale) for k in keys}

    def locales(self) -> list[str]:
        """The shop's locales, the default first."""
        w = self.ctx.wording
        return sorted(w.messages, key=lambda loc: (loc != w.default_locale, loc))

    def known_locale(self, locale: str) -> bool:
        return bool(LOCALE_RE.match(locale)) and locale in self.ctx.wording.messages

    def when(self, at: float | None) -> str:
        if not at:
            return ""
        return datetime.fromtimestamp(float(at), ZoneInfo(self.ctx.cfg.timezone)).strftime("%Y-%m-%d %H:%M:%S")

    def problem_text(self, p: Problem) -> str:
        t = self.labels()
        text = t.get(f"problem_{p.kind}", "{detail}").format(detail=p.detail)
        if p.line:
            text = t["at_line"].format(line=p.line) + text
        return text

    def sheet_error_text(self, exc: SheetError) -> str:
        return self.labels().get(f"sheet_{exc.kind}", "{detail}").format(detail=exc.detail)

    # --- responses -----------------------------------------------------------------------------
    def render(self, template: str, /, *, status: int = 200, session: Session | None = None,
               request: web.Request | None = None, **values: Any) -> web.Response:
        t = self.labels()
        flash = ""
        if request is not None:
            ok = request.query.get("ok", "")
            if re.fullmatch(r"[a-z_]{1,30}", ok) and f"ok_{ok}" in t:
                flash = t[f"ok_{ok}"].format(v=request.query.get("v", "")[:12])
        values.setdefault("nav", "")
        html = self.env.get_template(template).render(
            t=t, lang=self.locale, shop_name=self.settings.shop_name, flash=flash,
            user=session.user if session else "", csrf=session.csrf if session else "", **values)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)

    def fail(self, status: int, message: str, session: Session | None = None) -> NoReturn:
        raise _http_error(status, self.render("admin_message.html", session=session, title=message,
                                              message=message).text or "")

    @staticmethod
    def see_other(location: str) -> NoReturn:
        raise web.HTTPSeeOther(location, headers=HEADERS)

    # --- sessions and CSRF ------------------------------------------------------------------------
    def _disabled(self) -> NoReturn:
        raise _http_error(503, self.render("admin_disabled.html", title=self.labels()["disabled_title"]).text or "")

    async def session(self, request: web.Request) -> Session | None:
        return await self.sessions.get(request.cookies.get(COOKIE))

    async def require(self, request: web.Request) -> Session:
        """The live session of a page view; else off to the login page (and back here after)."""
        if not self.enabled:
            self._disabled()
        session = await self.session(request)
        if session is None:
            expired = "&expired=1" if request.cookies.get(COOKIE) else ""
            self.see_other(f"/admin/login?next={quote(request.path_qs, safe='')}{expired}")
        return session

    async def require_post(self, request: web.Request) -> tuple[Session, MultiDictProxy[Any]]:
        """The live session of a form post, whose CSRF token must match (403 otherwise)."""
        if not self.enabled:
            self._disabled()
        session = await self.session(request)
        if session is None:  # before reading the body: no upload is read for a stranger
            self.fail(403, self.labels()["session_gone"])
        form = await request.post()
        given = request.headers.get("X-CSRF-Token") or form.get("csrf")
        if not isinstance(given, str) or not session.csrf_ok(given):
            self.fail(403, self.labels()["csrf_failed"], session)
        return session, form

    async def require_json(self, request: web.Request) -> Session:
        """A script's call (live preview): session cookie and the CSRF header."""
        if not self.enabled:
            raise web.HTTPServiceUnavailable(headers=HEADERS)
        session = await self.session(request)
        if session is None or not session.csrf_ok(request.headers.get("X-CSRF-Token")):
            raise web.HTTPForbidden(headers=HEADERS)
        return session

    def set_session_cookie(self, resp: web.StreamResponse, sid: str) -> None:
        resp.set_cookie(COOKIE, sid, path=COOKIE_PATH, httponly=True, samesite="Strict",
                        secure=self.secure_cookies, max_age=int(self.sessions.seconds))

    @staticmethod
    def same(a: str, b: str) -> bool:
        return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _http_error(status: int, html: str) -> web.HTTPException:
    cls = {403: web.HTTPForbidden, 404: web.HTTPNotFound, 400: web.HTTPBadRequest, 503: web.HTTPServiceUnavailable,
           409: web.HTTPConflict}.get(status, web.HTTPBadRequest)
    return cls(text=html, content_type="text/html", headers=HEADERS)
