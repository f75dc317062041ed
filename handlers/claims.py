"""Claim types as data (Rasa forms): each lists its required slots in asking order.

The next question is the first empty slot; its wording is the template
`ask_<claim>_<slot>` if the shop wrote one, else `ask_<slot>`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from handlers.config import ShopConfig
from handlers.model import ClaimDraft

SLOTS = ("order_no", "photos", "description")


@dataclass(frozen=True)
class ClaimSpec:
    type: str
    slots: tuple[str, ...]


CLAIMS: dict[str, ClaimSpec] = {
    "wrong_item": ClaimSpec("wrong_item", ("order_no", "photos", "description")),
    "damaged": ClaimSpec("damaged", ("order_no", "photos", "description")),
    "quality": ClaimSpec("quality", ("order_no", "photos", "description")),
    "missing_item": ClaimSpec("missing_item", ("order_no", "photos", "description")),
    "not_received": ClaimSpec("not_received", ("order_no", "description")),
}


def slot_filled(draft: ClaimDraft, slot: str) -> bool:
    if slot == "order_no":
        return bool(draft.order_no) or draft.order_unverified
    if slot == "photos":
        return draft.photos_done or draft.photos_skipped
    if slot == "description":
        return bool(draft.description)
    raise KeyError(slot)


def next_slot(draft: ClaimDraft) -> str | None:
    for slot in CLAIMS[draft.type].slots:
        if not slot_filled(draft, slot):
            return slot
    return None


# What buyers put before an order number ("订单号：", "我的单号是", "order no.").
_ORDER_LABEL = r"(?:我的)?(?:订单号码?|订单编号|订单|单号|order\s*(?:no\.?|number|#)?)?\s*(?:是|为|:|：)?\s*"


def _tidy(text: str) -> str:
    """Punctuation left at the edges and doubled spaces out, after a number was taken away."""
    t = re.sub(r"^[\s,，。.;；:：!！]+|[\s,，;；:：]+$", "", text)
    return re.sub(r"\s{2,}", " ", t).strip()


class OrderNumbers:
    """Finds and validates order numbers with the shop's pattern (KEFU_ORDER_PATTERN)."""

    def __init__(self, cfg: ShopConfig) -> None:
        self._full = re.compile(cfg.order_pattern)
        # Candidates: runs of letters/digits/dashes that contain at least 5 digits.
        self._token = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*[A-Za-z0-9]|\d")

    def find(self, text: str) -> tuple[str | None, bool]:
        """Return (valid order number or None, whether something looked like an attempt)."""
        t = unicodedata.normalize("NFKC", text)
        attempt = False
        for m in self._token.finditer(t):
            tok = m.group(0)
            if self._full.fullmatch(tok):
                return tok, True
            for run in re.findall(r"\d+", tok):  # "TB3849..." or "#3849..."
                if run != tok and self._full.fullmatch(run):
                    return run, True
            digits = sum(ch.isdigit() for ch in tok)
            if digits >= 5:
                attempt = True
        # Spaces or dashes inside a pasted number ("3849 2017 5638 2910 475").
        joined = re.sub(r"(?<=\d)[\s\-]+(?=\d)", "", t)
        if joined != t:
            for m in self._token.finditer(joined):
                if self._full.fullmatch(m.group(0)):
                    return m.group(0), True
        return None, attempt

    def valid(self, value: str) -> bool:
        return bool(self._full.fullmatch(unicodedata.normalize("NFKC", value).strip()))

    def without_numbers(self, text: str) -> str:
        """The text without anything that looks like an order number (valid or not) and its label:
        what is left is what the buyer said in words."""
        t = re.sub(r"(?<=\d)[\s\-]+(?=\d)", "", unicodedata.normalize("NFKC", text))  # "3849 2017 …"
        return _tidy(re.sub(_ORDER_LABEL + r"[A-Za-z0-9\-]*\d{5,}[A-Za-z0-9\-]*", " ", t, flags=re.I))

    def strip(self, text: str, order_no: str | None) -> str:
        """The text without the order number and its label ("订单号：...")."""
        # Keep the buyer's own punctuation unless the number was typed in full width.
        t = text if not order_no or order_no in text else unicodedata.normalize("NFKC", text)
        if order_no:
            t = re.sub(_ORDER_LABEL + re.escape(order_no), " ", t, flags=re.I)
        return _tidy(t)
