"""Builds the handler's context from a config, a templates dir and a store."""

from __future__ import annotations

from pathlib import Path

from handlers.config import ShopConfig
from handlers.context import Context
from handlers.matcher import Router
from handlers.wording import Wording
from state.protocol import Store

# templates/ sits next to handlers/ in a checkout; KEFU_TEMPLATES_DIR can point elsewhere.
DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def router_entries(wording: Wording) -> dict[str, list[str]]:
    """Every label the router knows, with its example phrases from every locale."""
    entries: dict[str, list[str]] = {}
    for locale_entries in wording.faqs.values():
        for fid, entry in locale_entries.items():
            if entry.enabled:
                entries.setdefault(fid, []).extend([entry.title, *entry.questions])
    for intents in wording.intents.values():
        for label, examples in intents.items():
            entries.setdefault(label, []).extend(examples)
    return entries


def build_router(wording: Wording, cfg: ShopConfig) -> Router:
    return Router(router_entries(wording), answer_score=cfg.faq_answer_score, clarify_score=cfg.faq_clarify_score)


def build_context(
    cfg: ShopConfig, store: Store, templates: Path | str | None = None, overrides: dict[str, str] | None = None
) -> Context:
    wording = Wording(Path(templates) if templates else DEFAULT_TEMPLATES, default_locale="zh-CN",
                      overrides=dict(overrides or {}))
    return Context(cfg=cfg, wording=wording, router=build_router(wording, cfg), store=store)


def reload_wording(ctx: Context, overrides: dict[str, str]) -> None:
    """Swap in wording with these edits (raises TemplateProblem and keeps the old one if broken)."""
    wording = Wording(ctx.wording.root, default_locale=ctx.wording.default_locale, overrides=dict(overrides))
    router = build_router(wording, ctx.cfg)
    ctx.wording, ctx.router = wording, router  # one step each: a turn sees old or new, never half
