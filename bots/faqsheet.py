"""The FAQ sheet a shop keeps: reading it (YAML or CSV) into rows, writing it back out, and the
per-entry YAML kept under `faq/<locale>/<id>`. Pure functions: no store, no network.

YAML (the FAQ import format):   shop: …   faqs: [{id, title, questions: [...], answer}]   (intents: ignored)
CSV (what spreadsheets keep):   id,title,questions,answer[,locale]; questions separated by
                                newlines or `|` within the cell; UTF-8, with or without a BOM.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import yaml

from bots.tplcheck import Problem

COLUMNS = ("id", "title", "questions", "answer")
OPTIONAL_COLUMNS = ("locale", "buttons", "enabled")
ID = re.compile(r"^[a-z0-9_]{2,40}$")  # as handlers.wording: "faq:<id>" must fit a Telegram button
LOCALE = re.compile(r"^[A-Za-z\-]{2,10}$")
MAX_ROWS = 2000
_QUESTION_SPLIT = re.compile(r"[\n|｜]")
_FALSE = {"0", "false", "no", "n", "off", "否", "停用", "禁用"}
# libyaml when it is there: listing and exporting parse every entry
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)


class SheetError(ValueError):
    """The file as a whole cannot be read; `kind` picks the page's wording, `detail` fills it in."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class SheetRow:
    row: int  # CSV: the spreadsheet row (the header is row 1); YAML: the entry's position (1 = first)
    locale: str
    data: dict[str, Any]  # id, title, questions, answer (and buttons / enabled when the sheet has them)
    line: int | None = None  # YAML: where the entry starts
    problems: list[Problem] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.data.get("id") or "")


@dataclass
class Sheet:
    rows: list[SheetRow]
    ignored: list[str] = field(default_factory=list)  # top-level YAML sections left out (intents)


# --- reading ---------------------------------------------------------------------------------


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError:
        raise SheetError("encoding") from None


def split_questions(value: Any) -> list[str]:
    if isinstance(value, list):
        items = [str(q) for q in value if q is not None]
    else:
        items = _QUESTION_SPLIT.split(str(value or ""))
    return list(dict.fromkeys(q.strip() for q in items if q.strip()))


def _text(value: Any) -> str:
    return str(value if value is not None else "").replace("\r\n", "\n").replace("\r", "\n").strip()


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in _FALSE


def _buttons(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(b).strip() for b in value if str(b).strip()]
    return [b for b in re.split(r"[\s,|，]+", str(value or "")) if b]


def row_data(rec: dict[str, Any]) -> dict[str, Any]:
    """One entry as read from a sheet row, cleaned (optional keys only when present)."""
    data: dict[str, Any] = {
        "id": _text(rec.get("id")), "title": _text(rec.get("title")),
        "questions": split_questions(rec.get("questions")), "answer": _text(rec.get("answer")),
    }
    if rec.get("buttons") not in (None, ""):
        data["buttons"] = _buttons(rec["buttons"])
    if rec.get("enabled") not in (None, ""):
        data["enabled"] = _flag(rec["enabled"])
    return data


def row_problems(data: dict[str, Any], locale: str, known_locales: set[str] | None = None) -> list[Problem]:
    """What makes a row unusable before its answer is even looked at."""
    out: list[Problem] = []
    missing = [k for k in COLUMNS if not data.get(k)]
    if missing:
        out.append(Problem("required", ", ".join(missing)))
    if data.get("id") and not ID.match(str(data["id"])):
        out.append(Problem("id", str(data["id"]), field="id"))
    if not LOCALE.match(locale) or (known_locales is not None and locale not in known_locales):
        out.append(Problem("locale", locale))
    return out


def read_csv(raw: bytes, default_locale: str) -> Sheet:
    text = decode(raw)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise SheetError("empty") from None
    except csv.Error as exc:
        raise SheetError("csv", str(exc)) from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SheetError("columns", ", ".join(missing))
    rows: list[SheetRow] = []
    try:
        for number, cells in enumerate(reader, start=2):
            if not any(c.strip() for c in cells):
                continue  # blank lines at the end of a spreadsheet
            rec = {h: (cells[i] if i < len(cells) else "") for i, h in enumerate(header) if h}
            locale = _text(rec.get("locale")) or default_locale
            rows.append(SheetRow(number, locale, row_data(rec)))
            if len(rows) > MAX_ROWS:
                raise SheetError("too_many", str(MAX_ROWS))
    except csv.Error as exc:
        raise SheetError("csv", f"row {reader.line_num}: {exc}") from None
    return Sheet(rows)


def _entry_lines(text: str) -> list[int]:
    """Where each item of `faqs` starts (1-based lines), for the report."""
    try:
        root = yaml.compose(text, Loader=SafeLoader)
    except yaml.YAMLError:
        return []
    seq = root
    if isinstance(root, yaml.MappingNode):
        seq = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "faqs"), None)
    if not isinstance(seq, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in seq.value]


def read_yaml(raw: bytes, default_locale: str) -> Sheet:
    text = decode(raw)
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SheetError("yaml", f"{mark.line + 1}: {getattr(exc, 'problem', '')}" if mark else str(exc)) from None
    ignored: list[str] = []
    if isinstance(doc, dict):
        faqs = doc.get("faqs")
        ignored = [k for k in doc if k not in ("shop", "faqs", "locale")]
        default_locale = str(doc.get("locale") or default_locale)
    else:
        faqs = doc
    if not isinstance(faqs, list):
        raise SheetError("format")
    if len(faqs) > MAX_ROWS:
        raise SheetError("too_many", str(MAX_ROWS))
    lines = _entry_lines(text)
    rows: list[SheetRow] = []
    for number, item in enumerate(faqs, start=1):
        line = lines[number - 1] if number - 1 < len(lines) else None
        if not isinstance(item, dict):
            rows.append(SheetRow(number, default_locale, {"id": ""}, line, [Problem("format")]))
            continue
        locale = _text(item.get("locale")) or default_locale
        rows.append(SheetRow(number, locale, row_data(item), line))
    return Sheet(rows, ignored)


def read_sheet(raw: bytes, filename: str, default_locale: str) -> Sheet:
    """A CSV or YAML sheet, told apart by the file name (or, failing that, by its first line)."""
    name = filename.lower()
    if name.endswith(".csv"):
        return read_csv(raw, default_locale)
    if name.endswith((".yaml", ".yml")):
        return read_yaml(raw, default_locale)
    first = next((ln.strip() for ln in decode(raw).splitlines() if ln.strip() and not ln.startswith("#")), "")
    if first.startswith(("shop:", "faqs:", "-", "locale:")):
        return read_yaml(raw, default_locale)
    return read_csv(raw, default_locale)


# --- the per-entry YAML ------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # "questions:\n  - …" as in the shipped files, not PyYAML's flush-left lists.
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line answers as literal blocks, the way people write them by hand.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


class _Inline(list):  # type: ignore[type-arg]
    """A short list written the way the shipped files write buttons: ["human"]."""


def _inline(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.SequenceNode:
    items = [dumper.represent_scalar("tag:yaml.org,2002:str", str(v), style='"') for v in value]
    return yaml.SequenceNode("tag:yaml.org,2002:seq", items, flow_style=True)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(_Inline, _inline)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=1000)


def entry_source(data: dict[str, Any]) -> str:
    """The per-entry YAML (templates/faq/<locale>/<id>.yaml) for these fields."""
    # The answer as a literal block ("answer: |"), like the shipped files: diffs stay small.
    out: dict[str, Any] = {"id": data["id"], "title": data["title"], "questions": list(data["questions"]),
                           "answer": str(data["answer"]).strip() + "\n"}
    if data.get("buttons"):
        out["buttons"] = _Inline(data["buttons"])
    if data.get("enabled") is False:
        out["enabled"] = False
    return dump(out)


def parse_entry(source: str | None) -> dict[str, Any] | None:
    """An entry's fields from its YAML source (None if it is missing or not an entry)."""
    if not source or not source.strip():
        return None
    try:
        data = load_yaml(source)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    return {"id": str(data.get("id") or ""), "title": _text(data.get("title")),
            "questions": split_questions(data.get("questions") or []), "answer": _text(data.get("answer")),
            "buttons": _buttons(data.get("buttons") or []), "enabled": data.get("enabled", True) is not False}


def same_entry(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    def norm(d: dict[str, Any]) -> tuple[Any, ...]:
        return (d.get("id"), d.get("title"), tuple(d.get("questions") or ()), _text(d.get("answer")),
                tuple(d.get("buttons") or ()), d.get("enabled", True) is not False)

    return a is not None and b is not None and norm(a) == norm(b)


# --- writing -------------------------------------------------------------------------------------


def export_yaml(shop: str, locale: str, entries: list[dict[str, Any]]) -> str:
    faqs = []
    for e in entries:
        item: dict[str, Any] = {"id": e["id"], "title": e["title"], "questions": list(e["questions"]),
                                "answer": e["answer"]}
        if e.get("buttons"):
            item["buttons"] = list(e["buttons"])
        if e.get("enabled") is False:
            item["enabled"] = False
        faqs.append(item)
    return f"# FAQ sheet of {shop} ({locale}), exported by kefu\n" + dump({"shop": shop, "locale": locale, "faqs": faqs})


def export_csv(entries: list[dict[str, Any]]) -> bytes:
    """With a BOM, so that Excel opens the Chinese text as UTF-8."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for e in entries:
        writer.writerow([e["id"], e["title"], "\n".join(e["questions"]), e["answer"]])
    return buf.getvalue().encode("utf-8-sig")


def key_path(key: str) -> str:
    """Where a template key lives under templates/."""
    kind, _, rest = key.partition("/")
    loc, _, name = rest.partition("/")
    if kind == "messages":
        return f"messages/{loc}/{name}.j2"
    if kind == "labels":
        return f"messages/{loc}/labels.yaml"
    if kind == "faq":
        return f"faq/{loc}/{name}.yaml"
    return f"intents/{loc}.yaml"


def zip_templates(sources: dict[str, str]) -> bytes:
    """templates/ as a zip: key -> source in force."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(sources):
            zf.writestr(f"templates/{key_path(key)}", sources[key])
    return buf.getvalue()
