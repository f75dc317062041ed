"""Admin pages for the FAQ sheet as a whole, and for what the bot missed.

    GET  /admin/sheet                      import form and export links
    POST /admin/import                     a YAML or CSV sheet: every row checked, then all saved at once or none
    GET  /admin/export/faq.yaml?locale=    the sheet in force (files with edits), import format
    GET  /admin/export/faq.csv?locale=     the same as CSV (UTF-8 with BOM, for Excel)
    GET  /admin/export/templates.zip       templates/ with every edit applied, to commit back
    GET  /admin/misses                     questions the bot could not answer, most frequent first
    POST /admin/misses/add                 add a missed question to an entry's examples
    POST /admin/misses/dismiss             forget a missed question
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bots.editor import Rejected, Snapshot
from bots.faqsheet import (
    Sheet,
    SheetError,
    SheetRow,
    entry_source,
    export_csv,
    export_yaml,
    parse_entry,
    read_sheet,
    row_problems,
    same_entry,
    zip_templates,
)
from bots.adminsite import FAQ_ID, HEADERS
from bots.tplcheck import Problem

if TYPE_CHECKING:
    from bots.adminsite import AdminSite

log = logging.getLogger("kefu.admin")
MAX_SHEET = 2 * 1024 * 1024
SUGGEST_FOR = 30  # misses that get a suggested entry (the router scores each one)


@dataclass
class ImportReport:
    filename: str
    kind: str  # csv | yaml
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""  # the file as a whole could not be read
    problems: list[Problem] = field(default_factory=list)  # problems no row could be blamed for
    ignored: list[str] = field(default_factory=list)
    saved: bool = False
    version: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def rejected(self) -> int:
        return self.count("rejected")


class SheetPages:
    def __init__(self, site: "AdminSite") -> None:
        self.site = site

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/sheet", self.sheet_page),
            web.post("/admin/import", self.import_sheet),
            web.get("/admin/export/faq.yaml", self.export_yaml),
            web.get("/admin/export/faq.csv", self.export_csv),
            web.get("/admin/export/templates.zip", self.export_zip),
            web.get("/admin/misses", self.misses),
            web.post("/admin/misses/add", self.miss_add),
            web.post("/admin/misses/dismiss", self.miss_dismiss),
        ]

    # --- import ---------------------------------------------------------------------------------
    async def sheet_page(self, request: web.Request) -> web.Response:
        session = await self.site.require(request)
        return self._page(request, session, None)

    def _page(self, request: web.Request, session: Any, report: ImportReport | None, status: int = 200,
              locale: str = "") -> web.Response:
        site = self.site
        return site.render("admin_sheet.html", status=status, session=session, request=request, nav="sheet",
                           title=site.labels()["nav_sheet"], locales=site.locales(),
                           locale=locale or site.ctx.wording.default_locale, report=report)

    async def import_sheet(self, request: web.Request) -> web.Response:
        site = self.site
        session, form = await site.require_post(request)
        locale = str(form.get("locale") or site.ctx.wording.default_locale)
        upload = form.get("file")
        if not site.known_locale(locale):
            site.fail(400, site.labels()["bad_locale"], session)
        if not isinstance(upload, web.FileField):
            report = ImportReport("", "", error=site.labels()["sheet_nofile"])
            return self._page(request, session, report, 400, locale)
        raw = upload.file.read(MAX_SHEET + 1)
        name = upload.filename or ""
        if len(raw) > MAX_SHEET:
            report = ImportReport(name, "", error=site.labels()["sheet_too_big"])
            return self._page(request, session, report, 413, locale)
        report = await self.run_import(raw, name, locale, session.user)
        return self._page(request, session, report, 200 if report.saved or not (report.error or report.rejected
                                                                                 or report.problems) else 422, locale)

    async def run_import(self, raw: bytes, filename: str, locale: str, author: str) -> ImportReport:
        """Check every row, then save all added and changed entries in one version, or nothing."""
        site = self.site
        kind = "csv" if filename.lower().endswith(".csv") else "yaml"
        try:
            sheet = await asyncio.to_thread(read_sheet, raw, filename, locale)
        except SheetError as exc:
            return ImportReport(filename, kind, error=site.sheet_error_text(exc))
        kind = "yaml" if any(r.line for r in sheet.rows) or sheet.ignored else kind
        snap = await site.editor.snapshot()
        changes, statuses = await asyncio.to_thread(self._check_rows, sheet, snap)
        report = ImportReport(filename, kind, ignored=sheet.ignored)
        rejected = any(r.problems for r in sheet.rows)
        if not rejected and changes:
            try:
                added, changed = list(statuses.values()).count("added"), list(statuses.values()).count("changed")
                report.version = await site.editor.save(
                    changes, author=author, note=f"import {filename[:80]}: {added} added, {changed} changed")
                report.saved = True
            except Rejected as exc:
                by_key = {f"faq/{r.locale}/{r.id}": r for r in sheet.rows}
                for p in exc.problems:
                    if p.key in by_key:
                        by_key[p.key].problems.append(p)
                    else:
                        report.problems.append(p)
        for r in sheet.rows:
            report.rows.append({"row": r.row, "line": r.line, "id": r.id, "locale": r.locale,
                                "title": r.data.get("title", ""), "problems": r.problems,
                                "status": "rejected" if r.problems else statuses.get(id(r), "unchanged")})
        if report.saved:
            log.info("FAQ sheet imported (version %d, %d rows)", report.version, len(sheet.rows))
        return report

    def _check_rows(self, sheet: Sheet, snap: Snapshot) -> tuple[dict[str, str | None], dict[Any, str]]:
        """Per row: the problems (kept on the row) and added / changed / unchanged. CPU work: in a thread."""
        site = self.site
        known = set(site.ctx.wording.messages)
        first: dict[str, SheetRow] = {}
        changes: dict[str, str | None] = {}
        statuses: dict[Any, str] = {}
        for row in sheet.rows:
            if row.problems:
                continue
            row.problems.extend(row_problems(row.data, row.locale, known))
            if row.problems:
                continue
            key = f"faq/{row.locale}/{row.id}"
            if key in first:
                row.problems.append(Problem("duplicate", str(first[key].row)))
                continue
            first[key] = row
            current = parse_entry(snap.source(key))
            # The sheet has no buttons or on/off: an existing entry keeps its own.
            data = {"buttons": current["buttons"] if current else [],
                    "enabled": current["enabled"] if current else True, **row.data}
            source = entry_source(data)
            row.problems.extend(site.editor.check_one(key, source, snap.files))
            if row.problems:
                continue
            if current is None:
                statuses[id(row)] = "added"
            elif same_entry(current, data):
                statuses[id(row)] = "unchanged"
                continue
            else:
                statuses[id(row)] = "changed"
            changes[key] = source
        return changes, statuses

    # --- export ----------------------------------------------------------------------------------
    async def _entries(self, request: web.Request) -> tuple[str, list[dict[str, Any]]]:
        await self.site.require(request)
        locale = request.query.get("locale") or self.site.ctx.wording.default_locale
        if not self.site.known_locale(locale):
            raise web.HTTPNotFound(headers=HEADERS)
        snap = await self.site.editor.snapshot()
        return locale, await asyncio.to_thread(snap.faq_entries, locale)

    @staticmethod
    def _download(body: bytes, filename: str, content_type: str) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers={
            **HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'})

    async def export_yaml(self, request: web.Request) -> web.Response:
        locale, entries = await self._entries(request)
        text = export_yaml(self.site.settings.shop_name, locale, entries)
        return self._download(text.encode("utf-8"), f"faq-{locale}.yaml", "application/yaml")

    async def export_csv(self, request: web.Request) -> web.Response:
        locale, entries = await self._entries(request)
        return self._download(export_csv(entries), f"faq-{locale}.csv", "text/csv")

    async def export_zip(self, request: web.Request) -> web.Response:
        await self.site.require(request)
        snap = await self.site.editor.snapshot()
        body = await asyncio.to_thread(zip_templates, snap.in_force())
        return self._download(body, "templates.zip", "application/zip")

    # --- misses ------------------------------------------------------------------------------------
    def _suggest(self, question: str, locale: str) -> tuple[str, dict[str, str] | None]:
        """The entry to add the question to, and the phrasing-bank topic it is about when the
        shop has no entry for that topic (then "new entry" starts from the topic)."""
        w = self.site.ctx.wording
        router = self.site.ctx.router
        try:
            uncovered = getattr(router, "uncovered_topic", None)
            topic = uncovered(question) if uncovered else None
            if topic is not None:
                return "", {"id": topic.id, "title": topic.en if locale == "en" and topic.en else topic.title}
            for label, _ in router.scores(question)[:10]:
                if w.faqs.get(locale, {}).get(label) is not None:
                    return str(label), None
        except Exception:  # the router is another module's business: no suggestion then
            return "", None
        return "", None

    async def misses(self, request: web.Request) -> web.Response:
        site = self.site
        session = await site.require(request)
        misses = await site.store.list_misses(200)
        w = site.ctx.wording
        default = w.default_locale
        for i, m in enumerate(misses):
            m["locale"] = m.get("locale") if site.known_locale(str(m.get("locale") or "")) else default
            m["suggested"] = m.get("answered") or ""
            if i < SUGGEST_FOR and not m["suggested"]:
                m["suggested"], m["topic"] = await asyncio.to_thread(self._suggest, m["question"], m["locale"])
        entries = {loc: sorted(((fid, e.title) for fid, e in w.faqs.get(loc, {}).items() if e.enabled),
                               key=lambda x: x[1]) for loc in site.locales()}
        return site.render("admin_misses.html", session=session, request=request, nav="misses",
                           title=site.labels()["nav_misses"], misses=misses, entries=entries)

    async def miss_add(self, request: web.Request) -> web.Response:
        site = self.site
        session, form = await site.require_post(request)
        norm = str(form.get("norm") or "")[:200]
        question = " ".join(str(form.get("question") or "").split())[:500]
        locale, fid = str(form.get("locale") or ""), str(form.get("faq") or "")
        if not site.known_locale(locale) or not FAQ_ID.match(fid) or not question:
            site.fail(400, site.labels()["pick_entry"], session)
        key = f"faq/{locale}/{fid}"
        snap = await site.editor.snapshot()
        entry = parse_entry(snap.source(key))
        if entry is None:
            site.fail(404, site.labels()["no_such_entry"], session)
        version = ""
        if question not in entry["questions"]:
            entry["questions"].append(question)
            try:
                version = str(await site.editor.save({key: entry_source(entry)}, author=session.user,
                                                     note="add example from misses"))
            except Rejected as exc:
                site.fail(409, "; ".join(site.problem_text(p) for p in exc.problems), session)
        if norm:
            await site.store.dismiss_miss(norm)
        site.see_other(f"/admin/misses?ok=example_added&v={version}")

    async def miss_dismiss(self, request: web.Request) -> web.Response:
        site = self.site
        _, form = await site.require_post(request)
        norm = str(form.get("norm") or "")[:200]
        if norm:
            await site.store.dismiss_miss(norm)
        site.see_other("/admin/misses?ok=dismissed")
