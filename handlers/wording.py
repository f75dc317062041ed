"""Everything the bot says comes from templates/: bot messages, labels, FAQ answers,
and the phrases it recognises. Rendered in Jinja2's SandboxedEnvironment.

Layout (one file per message and per FAQ entry, per locale; zh-CN is the default):

    templates/messages/<locale>/<name>.j2     bot wording
    templates/messages/<locale>/labels.yaml   button labels, claim type names, ...
    templates/faq/<locale>/<id>.yaml          {id, title, questions, answer, buttons?}
    templates/intents/<locale>.yaml           example phrases for actions + short replies

Every template is compiled and rendered with sample values when loaded, so a
broken file is reported with its name and line instead of failing a buyer.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

DEFAULT_LOCALE = "zh-CN"

# The variables templates may use, with the sample values used to validate them.
SAMPLE_VARS: dict[str, Any] = {
    "shop_name": "小满生活馆",
    "buyer_name": "买家",
    "order_no": "3849201756382910475",
    "example": "3849201756382910475",
    "case_id": "K1042",
    "claim_type": "damaged",
    "claim_name": "运输破损",
    "photo_count": 2,
    "description": "杯子碎了一个",
    "order_unverified": False,
    "in_hours": True,
    "eta_minutes": 10,
    "return_day": "tomorrow",
    "return_time": "09:00",
    "return_weekday": "1",
    "return_date": "11-23",
    "hours_open": "09:00",
    "hours_close": "22:00",
    "position": 1,
    "attempts_left": 2,
    "agent": "小王",
    "summary": "已为您补发新杯子",
    "rating": 5,
    "faq_title": "发货时间",
    "topic": "",
    "max_photos": 20,
    "reason": "buyer_request",
    "why": "买家48小时内没有再发消息，微信不允许再回复",  # send_failed: why a message did not reach the buyer
    # The case card (case_card.j2) gets the card dict of handlers.cards plus two helpers.
    "card": {
        "id": "K1042", "type_name": "运输破损", "status": "open", "status_name": "待接入", "assignee": None,
        "buyer": {"name": "小李", "platform": "webchat"}, "order_no": "3849201756382910475",
        "order_verified": True, "reason_name": "售后登记", "waiting_seconds": 300,
        "description": "杯子碎了一个", "photos": [{"id": "x"}],
        "promises": [{"text": "10分钟内客服接入", "overdue": False}],
        "faq_given": [{"title": "发货时间"}],
        "earlier_cases": [{"id": "K1001", "type_name": "转人工", "status": "resolved", "status_name": "已解决"}],
        "transcript": [{"at": "2026-11-22T08:00:00.000Z", "who": "buyer", "agent": None, "text": "杯子碎了", "photos": [], "files": []}],
        "notes": [{"at": "2026-11-22T08:00:00.000Z", "agent": "小王", "text": "已补发"}],
        "resolution": None, "rating": None,
    },
    "local": lambda value: "11-22 16:00",
    "sender": "buyer",
    "sender_name": "小李",
    "line": "杯子碎了",
    "who": {"buyer": "买家", "bot": "机器人", "agent": "客服", "system": "系统"},
}
_ID = re.compile(r"^[a-z0-9_]{2,40}$")  # "faq:<id>" must fit a Telegram button's 64 bytes


# What an FAQ answer may use: it is rendered for any buyer, before any order or case.
FAQ_VARS = ("shop_name", "buyer_name", "hours_open", "hours_close")
FAQ_SAMPLE = {k: SAMPLE_VARS[k] for k in FAQ_VARS}

# Reloading wording after an admin's edit must be quick in every process (edits are live
# within 2 s): sources that did not change are not parsed or compiled again. The
# environment is shared because compiled templates belong to it; it holds no state.
_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


@lru_cache(maxsize=4096)
def _parsed(source: str) -> Any:
    return yaml.load(source, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader


class TemplateProblem(ValueError):
    """One or more templates are broken; `problems` lists file, line and message."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("broken templates:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class FaqEntry:
    id: str
    title: str
    questions: tuple[str, ...]
    answer: str  # template source
    buttons: tuple[str, ...] = ()  # payloads offered under the answer
    enabled: bool = True
    locale: str = DEFAULT_LOCALE


def file_sources(root: Path) -> dict[str, tuple[str, str]]:
    """Every template file under `root`: key -> (where, source).

    Keys: "messages/<locale>/<name>", "labels/<locale>", "faq/<locale>/<id>",
    "intents/<locale>"; the same keys name edits kept in the store."""
    out: dict[str, tuple[str, str]] = {}
    msg_root = root / "messages"
    if msg_root.is_dir():
        for loc_dir in sorted(p for p in msg_root.iterdir() if p.is_dir()):
            for f in sorted(loc_dir.glob("*.j2")):
                out[f"messages/{loc_dir.name}/{f.stem}"] = (str(f), f.read_text("utf-8"))
            labels = loc_dir / "labels.yaml"
            if labels.exists():
                out[f"labels/{loc_dir.name}"] = (str(labels), labels.read_text("utf-8"))
    faq_root = root / "faq"
    if faq_root.is_dir():
        for loc_dir in sorted(p for p in faq_root.iterdir() if p.is_dir()):
            for f in sorted(loc_dir.glob("*.yaml")):
                out[f"faq/{loc_dir.name}/{f.stem}"] = (str(f), f.read_text("utf-8"))
    intent_root = root / "intents"
    if intent_root.is_dir():
        for f in sorted(intent_root.glob("*.yaml")):
            out[f"intents/{f.stem}"] = (str(f), f.read_text("utf-8"))
    return out


_KEY = re.compile(r"^(?:messages/[A-Za-z\-]{2,10}/[a-z0-9_]{1,64}|labels/[A-Za-z\-]{2,10}|"
                  r"faq/[A-Za-z\-]{2,10}/[a-z0-9_]{2,40}|intents/[A-Za-z\-]{2,10})$")


def valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


@dataclass
class Wording:
    """All wording, from the files under `root` with `overrides` (edits kept in the
    store, same keys as file_sources; an empty source removes an entry) on top."""

    root: Path
    default_locale: str = DEFAULT_LOCALE
    overrides: dict[str, str] = field(default_factory=dict)
    env: SandboxedEnvironment = field(init=False)
    sources: dict[str, str] = field(init=False, default_factory=dict)  # key -> source in force
    messages: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)  # locale -> name -> Template
    labels: dict[str, dict[str, dict[str, str]]] = field(init=False, default_factory=dict)
    faqs: dict[str, dict[str, FaqEntry]] = field(init=False, default_factory=dict)
    intents: dict[str, dict[str, list[str]]] = field(init=False, default_factory=dict)
    replies: dict[str, dict[str, list[str]]] = field(init=False, default_factory=dict)
    _faq_templates: dict[tuple[str, str], Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.env = _ENV
        self.load()

    # --- loading ------------------------------------------------------------------
    def load(self) -> None:
        problems: list[str] = []
        if not (self.root / "messages").is_dir():
            raise TemplateProblem([f"{self.root / 'messages'}: templates directory not found"])
        merged = file_sources(self.root)
        for key, source in self.overrides.items():
            if not valid_key(key):
                problems.append(f"{key}: not a template name")
            elif source.strip():
                merged[key] = (f"{key} (edited)", source)
            else:
                merged.pop(key, None)  # removed by an admin
        self.sources = {k: src for k, (_, src) in merged.items()}
        for key, (where, source) in merged.items():
            kind, _, rest = key.partition("/")
            loc, _, name = rest.partition("/")
            if kind == "messages":
                tpl = self._compile(where, source, problems)
                self.messages.setdefault(loc, {})
                if tpl is not None:
                    self.messages[loc][name] = tpl
            elif kind == "labels":
                data = self._yaml(where, source, problems)
                if isinstance(data, dict):
                    self.labels[loc] = {str(k): {str(a): str(b) for a, b in (v or {}).items()} for k, v in data.items()}
                elif data is not None:
                    problems.append(f"{where}: expected a mapping of label groups")
            elif kind == "faq":
                entry = self._faq(where, name, loc, source, problems)
                if entry is not None:
                    self.faqs.setdefault(loc, {})[entry.id] = entry
            elif kind == "intents":
                data = self._yaml(where, source, problems)
                if not isinstance(data, dict):
                    problems.append(f"{where}: expected a mapping with 'intents' and 'replies'")
                    continue
                self.intents[loc] = {str(k): [str(x) for x in v or []] for k, v in (data.get("intents") or {}).items()}
                self.replies[loc] = {str(k): [str(x) for x in v or []] for k, v in (data.get("replies") or {}).items()}
        if self.default_locale not in self.messages:
            problems.append(f"messages/{self.default_locale}: default locale has no messages")
        for loc, names in self.messages.items():
            for name, tpl in names.items():
                self._check_render(merged[f"messages/{loc}/{name}"][0], tpl, problems)
        for (loc, fid), tpl in self._faq_templates.items():
            # An answer is rendered with the shop's values only (see FAQ_VARS), so check it with those.
            self._check_render(f"{merged[f'faq/{loc}/{fid}'][0]} (answer)", tpl, problems, FAQ_SAMPLE)
        if problems:
            raise TemplateProblem(problems)

    def _compile(self, where: str, source: str, problems: list[str]) -> Any:
        try:
            return _compiled(source)
        except TemplateSyntaxError as exc:
            problems.append(f"{where}:{exc.lineno}: {exc.message}")
            return None

    def _check_render(self, where: str, tpl: Any, problems: list[str], values: dict[str, Any] = SAMPLE_VARS) -> None:
        try:
            tpl.render(**values)
        except UndefinedError as exc:
            problems.append(f"{where}: unknown variable ({exc.message})")
        except SecurityError as exc:
            problems.append(f"{where}: not allowed in a template ({exc})")
        except Exception as exc:  # a template is content: report, never crash startup silently
            problems.append(f"{where}: {exc.__class__.__name__}: {exc}")

    @staticmethod
    def _yaml(where: str, source: str, problems: list[str]) -> Any:
        try:
            return copy.deepcopy(_parsed(source))  # callers may keep and change what they get
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problems.append(f"{where}{line}: invalid YAML ({getattr(exc, 'problem', exc)})")
            return None

    def _faq(self, where: str, name: str, locale: str, source: str, problems: list[str]) -> FaqEntry | None:
        data = self._yaml(where, source, problems)
        if data is None:
            return None
        if not isinstance(data, dict):
            problems.append(f"{where}: expected a mapping with id, title, questions, answer")
            return None
        missing = [k for k in ("id", "title", "questions", "answer") if not data.get(k)]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            return None
        fid = str(data["id"])
        if not _ID.match(fid):
            problems.append(f"{where}: id {fid!r} must be 2-40 of a-z, 0-9, _")
            return None
        if fid != name:
            problems.append(f"{where}: id {fid!r} must match the file name")
            return None
        questions = data["questions"]
        if not isinstance(questions, list) or not all(isinstance(q, (str, int)) for q in questions):
            problems.append(f"{where}: questions must be a list of example questions")
            return None
        tpl = self._compile(f"{where} (answer)", str(data["answer"]), problems)
        if tpl is None:
            return None
        self._faq_templates[(locale, fid)] = tpl
        return FaqEntry(
            id=fid, title=str(data["title"]), questions=tuple(str(q) for q in questions),
            answer=str(data["answer"]), buttons=tuple(str(b) for b in data.get("buttons") or ()),
            enabled=bool(data.get("enabled", True)), locale=locale,
        )

    # --- lookups --------------------------------------------------------------------
    def _locale_for(self, table: dict[str, Any], locale: str) -> str:
        return locale if locale in table else self.default_locale

    def has(self, name: str, locale: str | None = None) -> bool:
        return name in self.messages.get(self._locale_for(self.messages, locale or self.default_locale), {}) or \
            name in self.messages.get(self.default_locale, {})

    def render(self, name: str, locale: str, /, **values: Any) -> str:
        loc = self._locale_for(self.messages, locale)
        tpl = self.messages[loc].get(name) or self.messages[self.default_locale][name]
        return tpl.render(**values).strip()

    def label(self, group: str, key: str, locale: str) -> str:
        for loc in (locale, self.default_locale):
            value = self.labels.get(loc, {}).get(group, {}).get(key)
            if value is not None:
                return value
        return key

    def faq(self, faq_id: str, locale: str) -> FaqEntry | None:
        for loc in (locale, self.default_locale):
            entry = self.faqs.get(loc, {}).get(faq_id)
            if entry is not None and entry.enabled:
                return entry
        return None

    def faq_answer(self, faq_id: str, locale: str, /, **values: Any) -> str:
        entry = self.faq(faq_id, locale)
        if entry is None:
            raise KeyError(faq_id)
        return self._faq_templates[(entry.locale, faq_id)].render(**values).strip()

    def faq_ids(self) -> list[str]:
        ids: set[str] = set()
        for entries in self.faqs.values():
            ids.update(i for i, e in entries.items() if e.enabled)
        return sorted(ids)

    def phrases(self, kind: str) -> set[str]:
        """Short replies of one kind (yes, no, done, ...) in every locale."""
        out: set[str] = set()
        for table in self.replies.values():
            out.update(table.get(kind, ()))
        return out
