"""Checking one template as an admin writes it, with the line of every problem.

Three checks, before anything is stored: the syntax; the variables (only those the bot
passes to that template: an unknown one would fail a buyer at run time, even in a branch
the sample values never take); attributes that would leave the sandbox
(`{{ ''.__class__.__mro__ }}`, `|attr('__globals__')`, found in every branch). Then the
template is rendered in the sandbox with sample values: the preview.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Iterable

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    SandboxedEnvironment,
)

from handlers.wording import SAMPLE_VARS

# What Turn.values() gives every buyer-facing template, FAQ answers included.
BUYER_VARS = ("shop_name", "buyer_name", "hours_open", "hours_close")
FAQ_VARS = BUYER_VARS
# Desk wording is rendered with its own values only (handlers/cards.py, handlers/desk.py, bots/telegram.py).
DESK_PREFIXES = ("desk_", "notice_", "case_card")
_UNSAFE = (UNSAFE_FUNCTION_ATTRIBUTES | UNSAFE_METHOD_ATTRIBUTES | UNSAFE_GENERATOR_ATTRIBUTES
           | UNSAFE_COROUTINE_ATTRIBUTES | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES | {"mro"})
MAX_PREVIEW = 20_000


@dataclass(frozen=True)
class Problem:
    """One thing wrong. `kind` picks the wording on the page (syntax, variable, sandbox, render,
    required, id, exists, duplicate, locale, yaml, other); `detail` fills it in."""

    kind: str
    detail: str = ""
    line: int | None = None
    key: str = ""  # the template key it belongs to, when known
    field: str = ""  # the form field (answer, source, title, questions, id)

    def text(self) -> str:
        """Plain English, for the JSON API and logs."""
        where = f"{self.key}:{self.line}" if self.line else self.key
        return f"{where}: {self.kind}: {self.detail}" if where else f"{self.kind}: {self.detail}"


def new_env() -> SandboxedEnvironment:
    """The same environment handlers.wording renders with."""
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)


def variables_in(source: str) -> set[str]:
    """The variables a template reads (empty if it does not parse)."""
    try:
        return set(meta.find_undeclared_variables(new_env().parse(source)))
    except TemplateSyntaxError:
        return set()


def _template_line(exc: BaseException) -> int | None:
    """Jinja rewrites tracebacks so that template frames carry the template's line numbers."""
    line = None
    tb: types.TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _unsafe_name(name: str) -> bool:
    return name.startswith("_") or name in _UNSAFE


def _sandbox_problems(ast: nodes.Template) -> list[Problem]:
    out: list[Problem] = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            name = node.args[0].value
        if isinstance(name, str) and _unsafe_name(name):
            out.append(Problem("sandbox", name, node.lineno))
    out.reverse()  # find_all gives the outermost (rightmost) attribute first
    return sorted(out, key=lambda p: p.line or 0)


def _variable_problems(ast: nodes.Template, allowed: set[str]) -> list[Problem]:
    unknown = meta.find_undeclared_variables(ast) - allowed
    first: dict[str, int] = {}
    for node in ast.find_all(nodes.Name):
        if node.name in unknown and node.ctx == "load":
            first.setdefault(node.name, node.lineno)
    return [Problem("variable", name, first.get(name)) for name in sorted(unknown, key=lambda n: (first.get(n, 0), n))]


def check_template(source: str, allowed: Iterable[str], values: dict[str, Any] | None = None,
                   env: SandboxedEnvironment | None = None) -> tuple[str | None, list[Problem]]:
    """(the rendered text, problems): the text only when there are no problems. CPU work: run it in a thread."""
    env = env or new_env()
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return None, [Problem("syntax", exc.message or "", exc.lineno)]
    problems = _sandbox_problems(ast) + _variable_problems(ast, set(allowed))
    if problems:
        return None, problems
    try:
        text = env.from_string(source).render(**(values if values is not None else SAMPLE_VARS))
    except TemplateSyntaxError as exc:
        return None, [Problem("syntax", exc.message or "", exc.lineno)]
    except SecurityError as exc:
        return None, [Problem("sandbox", str(exc), _template_line(exc))]
    except UndefinedError as exc:
        return None, [Problem("variable", exc.message or str(exc), _template_line(exc))]
    except Exception as exc:  # content, not code: report whatever it is
        return None, [Problem("render", f"{exc.__class__.__name__}: {exc}", _template_line(exc))]
    text = text.strip()
    return (text[:MAX_PREVIEW] + " …") if len(text) > MAX_PREVIEW else text, []


def allowed_variables(key: str, file_sources: dict[str, str]) -> set[str]:
    """The variables the bot passes to the template under `key`.

    FAQ answers get BUYER_VARS. A message gets what its shipped file (in any locale) uses,
    plus BUYER_VARS unless it is desk wording; a message with no file gets every sample variable."""
    kind, _, rest = key.partition("/")
    if kind == "faq":
        return set(FAQ_VARS)
    if kind != "messages":
        return set(SAMPLE_VARS)
    name = rest.partition("/")[2]
    shipped = [src for k, src in file_sources.items() if k.startswith("messages/") and k.rsplit("/", 1)[-1] == name]
    if not shipped:
        return set(SAMPLE_VARS)
    used: set[str] = set()
    for src in shipped:
        used |= variables_in(src)
    if not name.startswith(DESK_PREFIXES):
        used |= set(BUYER_VARS)
    return used
