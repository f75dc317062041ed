"""Builds the handler's context from a config, a templates dir and a store."""

from __future__ import annotations

from pathlib import Path

import logging

from handlers.bank import Topic, bank_for
from handlers.config import ShopConfig
from handlers.context import Context
from handlers.matcher import LexicalRouter, Router
from handlers.wording import Wording
from state.protocol import Store

log = logging.getLogger("kefu.routing")

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


def faq_answers(wording: Wording) -> dict[str, str]:
    out: dict[str, str] = {}
    for entries in wording.faqs.values():
        for fid, entry in entries.items():
            if entry.enabled:
                out.setdefault(fid, entry.answer)
    return out


def make_router(entries: dict[str, list[str]], answers: dict[str, str], cfg: ShopConfig,
                cache_dir: Path | None = None, bank: dict[str, Topic] | None = None) -> Router:
    """The semantic router if its model loads (and is wanted), else the lexical one."""
    if cfg.route_method != "lexical":
        try:
            from handlers.semantic import Embedder, SemanticRouter

            return SemanticRouter(entries, answers, Embedder(cache_dir), answer_score=cfg.route_answer_score,
                                  clarify_score=cfg.route_clarify_score, margin=cfg.route_margin, bank=bank)
        except Exception as exc:  # a missing wheel on this platform, a broken install: keep serving
            if cfg.route_method == "semantic":
                raise
            log.warning("semantic routing unavailable (%s: %s); using the lexical router",
                        exc.__class__.__name__, exc)
    return LexicalRouter(entries)


def build_router(wording: Wording, cfg: ShopConfig, cache_dir: Path | None = None) -> Router:
    bank = bank_for(wording.root) if cfg.route_bank else None
    return make_router(router_entries(wording), faq_answers(wording), cfg, cache_dir, bank)


def build_context(
    cfg: ShopConfig, store: Store, templates: Path | str | None = None, overrides: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> Context:
    wording = Wording(Path(templates) if templates else DEFAULT_TEMPLATES, default_locale="zh-CN",
                      overrides=dict(overrides or {}))
    ctx = Context(cfg=cfg, wording=wording, router=build_router(wording, cfg, cache_dir), store=store)
    ctx.cache_dir = cache_dir
    return ctx


def reload_wording(ctx: Context, overrides: dict[str, str]) -> None:
    """Swap in wording with these edits (raises TemplateProblem and keeps the old one if broken)."""
    wording = Wording(ctx.wording.root, default_locale=ctx.wording.default_locale, overrides=dict(overrides))
    router = build_router(wording, ctx.cfg, ctx.cache_dir)
    ctx.wording, ctx.router = wording, router  # one step each: a turn sees old or new, never half
