"""Changing what the bot says while it runs: the sources in force (files with the store's edits on
top), validation of a change as a whole before it is stored, versions with diffs, and the reload.

Both the JSON admin API (bots/admin.py) and the admin pages (bots/adminpages.py) save through here.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

from bots.faqsheet import parse_entry
from bots.tplcheck import Problem, allowed_variables, check_template
from handlers.context import Context
from handlers.setup import reload_wording
from handlers.wording import SAMPLE_VARS, TemplateProblem, Wording, file_sources
from state.protocol import Store

log = logging.getLogger("kefu.admin")

LOCK = "admin:content"
# "faq/zh-CN/invoice (edited) (answer):3: unexpected '}'" -> key, line, message
_WORDING_PROBLEM = re.compile(
    r"^(?P<key>(?:messages|labels|faq|intents)/[^\s:]+)(?: \(edited\))?(?: \(answer\))?(?::(?P<line>\d+))?: (?P<msg>.*)$",
    re.S)


class Rejected(Exception):
    """Nothing was saved: the change has these problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.text() for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Snapshot:
    """Template sources at one moment: the files and the edits kept in the store."""

    files: dict[str, str]
    overrides: dict[str, str]

    def source(self, key: str) -> str | None:
        """The source in force (None: no such template, or removed by an admin)."""
        if key in self.overrides:
            return self.overrides[key] if self.overrides[key].strip() else None
        return self.files.get(key)

    def edited(self, key: str) -> bool:
        return key in self.overrides

    def removed(self, key: str) -> bool:
        return key in self.overrides and not self.overrides[key].strip()

    def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in set(self.files) | set(self.overrides) if k.startswith(prefix))

    def in_force(self) -> dict[str, str]:
        out = dict(self.files)
        for key, source in self.overrides.items():
            if source.strip():
                out[key] = source
            else:
                out.pop(key, None)
        return out

    def faq_entries(self, locale: str, with_removed: bool = False) -> list[dict[str, Any]]:
        """Every FAQ entry of a locale, parsed, with where it comes from. CPU work: call in a thread."""
        out = []
        for key in self.keys(f"faq/{locale}/"):
            if self.removed(key):
                if with_removed and key in self.files:
                    shipped = parse_entry(self.files[key]) or {"id": key.rsplit("/", 1)[-1], "title": "",
                                                               "questions": [], "answer": "", "buttons": [],
                                                               "enabled": True}
                    out.append({**shipped, "key": key, "edited": True, "removed": True, "from_file": True})
                continue
            data = parse_entry(self.source(key))
            if data is not None:
                out.append({**data, "key": key, "edited": self.edited(key), "removed": False,
                            "from_file": key in self.files})
        return out


@dataclass(frozen=True)
class Version:
    version: int  # 0: the file as shipped
    author: str
    at: float
    note: str
    source: str | None  # None: back to the file (or gone)
    diff: list[str]  # unified diff lines, previous -> this one
    current: bool = False


def unified_diff(before: str, after: str, a: str, b: str) -> list[str]:
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(), a, b, lineterm="", n=3))


def _wording_problem(text: str) -> Problem:
    m = _WORDING_PROBLEM.match(text)
    if m is None:
        return Problem("other", text)
    return Problem("other", m.group("msg"), int(m.group("line")) if m.group("line") else None, key=m.group("key"))


class Editor:
    def __init__(self, ctx: Context, store: Store) -> None:
        self.ctx = ctx
        self.store = store
        # Told each version this process saves (and reloads itself), so that its watcher leaves it alone.
        self.on_saved: Callable[[int], None] | None = None

    @property
    def root(self) -> Any:
        return self.ctx.wording.root

    def sample_values(self) -> dict[str, Any]:
        """What previews render with: the sample values, with this shop's own name and hours."""
        cfg = self.ctx.cfg
        return {**SAMPLE_VARS, "shop_name": cfg.shop_name, "hours_open": cfg.hours_open, "hours_close": cfg.hours_close}

    async def snapshot(self) -> Snapshot:
        files = await asyncio.to_thread(file_sources, self.root)
        overrides = await self.store.template_overrides()
        return Snapshot({k: src for k, (_, src) in files.items()}, overrides)

    # --- checking ---------------------------------------------------------------------------
    def check_one(self, key: str, source: str, files: dict[str, str]) -> list[Problem]:
        """The template checks (syntax, variables, sandbox, sample render) of one changed source."""
        kind = key.partition("/")[0]
        values = self.sample_values()
        if kind == "messages":
            _, problems = check_template(source, allowed_variables(key, files), values)
            return [Problem(p.kind, p.detail, p.line, key, "source") for p in problems]
        if kind == "faq":
            data = parse_entry(source)
            if data is None or not data["answer"]:
                return []  # Wording names what is missing, with the line
            _, problems = check_template(data["answer"], allowed_variables(key, files), values)
            return [Problem(p.kind, p.detail, p.line, key, "answer") for p in problems]
        return []

    def validate(self, changes: dict[str, str | None], snapshot: Snapshot) -> list[Problem]:
        """Every problem of these changes, judged with all edits applied. CPU work: call in a thread."""
        problems: list[Problem] = []
        for key, source in changes.items():
            if source is not None and source.strip():
                problems.extend(self.check_one(key, source, snapshot.files))
        if problems:
            return problems
        overrides = dict(snapshot.overrides)
        for key, source in changes.items():
            if source is None:
                overrides.pop(key, None)
            else:
                overrides[key] = source
        try:
            Wording(self.root, self.ctx.wording.default_locale, overrides)
        except TemplateProblem as exc:
            return [_wording_problem(p) for p in exc.problems]
        return []

    # --- saving -------------------------------------------------------------------------------
    async def save(self, changes: dict[str, str | None], author: str, note: str = "") -> int:
        """Validate the changes against everything in force and store them as one version each
        (all or none); the bot serves them at once here and within a second everywhere else.
        Raises Rejected with the problems; nothing is stored then."""
        if not changes:
            raise ValueError("nothing to save")
        async with self.store.lock(LOCK, timeout=30):  # two admins saving at once: one after the other
            snapshot = await self.snapshot()
            problems = await asyncio.to_thread(self.validate, changes, snapshot)
            if problems:
                raise Rejected(problems)
            version = await self.store.put_templates(changes, author=author, note=note)
            if self.on_saved is not None:
                self.on_saved(version)
        await self.reload()
        log.info("content saved by admin (version %d, %d template(s))", version, len(changes))
        return version

    async def reload(self) -> None:
        overrides = await self.store.template_overrides()  # read after the save: includes it
        try:
            await asyncio.to_thread(reload_wording, self.ctx, overrides)
        except TemplateProblem as exc:  # only if an edit slipped in around the validation
            log.error("edited wording does not load; the previous version keeps serving: %s", exc)

    # --- history --------------------------------------------------------------------------------
    async def history(self, key: str, limit: int = 50) -> list[Version]:
        """Newest first, each with its diff against the one before; the shipped file is version 0."""
        rows = await self.store.template_history(key, limit=limit)
        files = await asyncio.to_thread(file_sources, self.root)
        file_source = files[key][1] if key in files else None

        def text(source: str | None) -> str:
            return file_source or "" if source is None else source

        out = []
        for i, row in enumerate(rows):
            before, after = text(row.get("previous")), text(row.get("source"))
            prev = rows[i + 1]["version"] if i + 1 < len(rows) else 0
            out.append(Version(int(row["version"]), str(row.get("author") or ""), float(row.get("at") or 0),
                               str(row.get("note") or ""), row.get("source"),
                               unified_diff(before, after, f"v{prev}", f"v{row['version']}"), current=i == 0))
        if file_source is not None and len(rows) < limit:
            out.append(Version(0, "", 0.0, "", None, [], current=not rows))
        return out

    async def rollback(self, key: str, version: int, author: str) -> int:
        """Save version `version` of `key` again, as a new version (0: the shipped file)."""
        if version == 0:
            source: str | None = None
        else:
            rows = await self.store.template_history(key, limit=1000)
            match = [r for r in rows if int(r["version"]) == version]
            if not match:
                raise KeyError(version)
            source = match[0].get("source")
        return await self.save({key: source}, author=author, note=f"rollback to v{version}")
