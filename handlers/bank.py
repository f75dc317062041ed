"""kefu's phrasing bank (行业问法库): many ways buyers ask about common shop topics.

A shop writes three to eight example questions per FAQ entry; buyers phrase the same need in
dozens of ways. kefu ships templates/bank/*.yaml, topics of a typical online shop (shipping,
returns, invoices, sizes, claims, ...) with realistic buyer phrasings in Chinese (Simplified
and Traditional), English and mixes. When a router is built, each of the shop's FAQ entries
is linked to the bank topics it covers (by how closely the entry's own examples sit among
a topic's phrasings), and a linked topic's phrasings count as further examples of that entry.
Topics no entry covers stay as "known, but this shop has no answer": a message closest to one
of them is "not sure" (menu and a person), not a confident answer from a neighbouring entry.
Claim, person and off-topic topics link to kefu's own action labels of the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from handlers.matcher import simplify

log = logging.getLogger("kefu.routing")

UNCOVERED = "other:"  # label prefix of a bank topic no entry of the shop covers

# Linking thresholds (cosine of sentence vectors, see link()).
LINK_MIN = 0.6  # an entry's examples must sit at least this close to the topic's phrasings;
# the topic is the one the entry sits closest to, or else the entry is clearly the topic's best
LINK_LEAD = 0.03  # (closer than any other entry by this much)
LINK_NEAR = 0.1  # and about as close as to its own closest topic
LINK_EXAMPLE = 0.85  # or: one of the entry's own examples is this close to one of the topic's phrasings


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    en: str
    phrasings: tuple[str, ...]


def load_bank(root: Path) -> dict[str, Topic]:
    """Every topic of root/bank/*.yaml (files merge; a broken file is logged and skipped)."""
    topics: dict[str, Topic] = {}
    folder = Path(root) / "bank"
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text("utf-8")) or {}
            for tid, t in (data.get("topics") or {}).items():
                phrasings = tuple(dict.fromkeys(str(p).strip() for p in t.get("phrasings") or [] if str(p).strip()))
                if phrasings:
                    old = topics.get(str(tid))
                    if old is not None:
                        phrasings = tuple(dict.fromkeys([*old.phrasings, *phrasings]))
                    topics[str(tid)] = Topic(str(tid), str(t.get("title") or tid), str(t.get("en") or ""), phrasings)
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
            log.warning("phrasing bank file %s skipped: %s", path.name, exc)
    return topics


KEFU_LABELS = ("human", "complaint", "none", "greeting", "thanks")  # kefu's own labels besides claims


def is_action(topic_id: str) -> bool:
    """A topic for one of kefu's own labels (a claim, a person, off-topic), linked by id."""
    return topic_id.startswith("claim:") or topic_id in KEFU_LABELS


def is_entry(label: str) -> bool:
    """A shop's FAQ entry (not a claim, a person, small talk, or an uncovered topic)."""
    return not (label.startswith("claim:") or label.startswith(UNCOVERED) or label in KEFU_LABELS)


@lru_cache(maxsize=4)
def _cached(folder: str, stamp: tuple[tuple[str, float, int], ...]) -> dict[str, Topic]:
    return load_bank(Path(folder).parent)


def bank_for(root: Path) -> dict[str, Topic]:
    """load_bank(root), read again only when a bank file changes (routers are rebuilt on
    every admin edit)."""
    folder = Path(root) / "bank"
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    stamp = tuple((f.name, f.stat().st_mtime, f.stat().st_size) for f in files)
    return _cached(str(folder), stamp)


def starter_questions(topic: Topic, locale: str, n: int = 6) -> list[str]:
    """A few of a topic's shorter phrasings in the locale's language, to start a new entry with
    (Simplified Chinese for zh locales, English otherwise)."""
    def fits(p: str) -> bool:
        cjk = any("\u3400" <= ch <= "\u9fff" for ch in p)
        if locale.startswith("zh"):
            return cjk and simplify(p) == p.lower() and not any(ch.isascii() and ch.isalpha() for ch in p)
        return not cjk
    return sorted((p for p in topic.phrasings if fits(p)), key=len)[:n]


def augment(entries: dict[str, list[str]], bank: dict[str, Topic],
            links: dict[str, list[str]]) -> dict[str, list[str]]:
    """The router's labels and examples: each label's own examples plus the phrasings of the
    topics linked to it; every shop topic no label covers as its own label (UNCOVERED + id)."""
    out = {label: list(exs) for label, exs in entries.items()}
    for label, topics in links.items():
        out[label] = list(dict.fromkeys([*out[label], *(p for t in topics for p in bank[t].phrasings)]))
    linked = {t for ts in links.values() for t in ts}
    for tid, topic in bank.items():
        if tid not in linked and not is_action(tid):
            out[UNCOVERED + tid] = list(topic.phrasings)
    return out


def link(entries: dict[str, list[str]], bank: dict[str, Topic],
         embed: Callable[[list[str]], np.ndarray]) -> dict[str, list[str]]:
    """label -> the bank topics it covers. Action topics link to the label of the same id;
    a shop topic links to the entry whose examples (title included) sit closest to its
    phrasings on average, when that is close enough and clearly closer than any other entry."""
    links: dict[str, list[str]] = {}
    faq_topics: list[Topic] = []
    for t in bank.values():
        if is_action(t.id):
            if t.id in entries:
                links.setdefault(t.id, []).append(t.id)
        else:
            faq_topics.append(t)
    faq_labels = [lb for lb, exs in entries.items() if exs and is_entry(lb)]
    if not faq_topics or not faq_labels:
        return links
    score, per_text, owner = affinity([entries[lb] for lb in faq_labels],
                                      [[t.title, t.en, *t.phrasings] for t in faq_topics], embed)
    for j, t in enumerate(faq_topics):
        col = score[:, j]
        order = np.argsort(-col)
        best = int(order[0])
        lead = col[best] - (col[order[1]] if len(order) > 1 else 0.0)
        mutual = int(np.argmax(score[best])) == j  # the topic is also the one the entry sits closest to
        if col[best] >= LINK_MIN and (mutual or (lead >= LINK_LEAD and col[best] >= score[best].max() - LINK_NEAR)):
            links.setdefault(faq_labels[best], []).append(t.id)
            continue
        # An entry that covers two topics ("什么时候发货" and "拍了两天了咋还没发货" in one entry)
        # sits closer to one of them on average; the other is linked too when one of the entry's
        # own examples is clearly one of its phrasings, and no other entry's example is as close.
        mine = np.flatnonzero(per_text.argmax(axis=1) == j)
        if len(mine):
            k = int(mine[np.argmax(per_text[mine, j])])
            if per_text[k, j] >= LINK_EXAMPLE and per_text[:, j].max() <= per_text[k, j]:
                links.setdefault(faq_labels[owner[k]], []).append(t.id)
    return links


def affinity(groups: list[list[str]], topics: list[list[str]],
             embed: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each text of a group its best cosine among each topic's texts (n_texts, n_topics),
    the group of each text, and those cosines averaged over each group (n_groups, n_topics)."""
    flat_g = [x for g in groups for x in g if x.strip()]
    owner_g = np.array([i for i, g in enumerate(groups) for x in g if x.strip()])
    flat_t = [x for t in topics for x in t if x.strip()]
    owner_t = np.array([j for j, t in enumerate(topics) for x in t if x.strip()])
    sims = embed(flat_g) @ embed(flat_t).T  # (n_g_texts, n_t_texts)
    starts = np.flatnonzero(np.r_[True, owner_t[1:] != owner_t[:-1]])
    best = np.maximum.reduceat(sims, starts, axis=1)  # (n_g_texts, n_topics)
    out = np.zeros((len(groups), len(topics)), dtype=np.float32)
    for i in range(len(groups)):
        rows = best[owner_g == i]
        if len(rows):
            out[i] = rows.mean(axis=0)
    return out, best, owner_g
