"""What a handler is given besides the event and the conversation, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from handlers.config import ShopConfig
from handlers.matcher import Router
from handlers.model import Action, Case, Conversation
from handlers.wording import Wording
from state.protocol import Store


@dataclass
class Context:
    cfg: ShopConfig
    wording: Wording
    router: Router
    store: Store  # handlers read through it; only the engine writes
    cache_dir: Path | None = None  # where the router keeps its embedding cache


@dataclass
class Outcome:
    conversation: Conversation | None
    cases: list[Case] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    error: str | None = None  # not_found | conflict | invalid (agent commands)
    detail: str = ""
    duplicate: bool = False
    case_id: str | None = None  # the case this turn created or acted on
    misses: list[dict[str, str]] = field(default_factory=list)  # for the admin's misses page
