"""Routes a buyer message to an FAQ entry, an action (claim, human, ...) or nothing.

A lexical matcher: character uni/bi-grams for Chinese, words for English,
TF-IDF weighted cosine against every example question, best example wins.
It sits behind `Router.route()` so a better method can replace it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KEEP = re.compile(rf"[{_CJK}]+|[a-z]+|\d+")


def normalize(text: str) -> str:
    """Full-width -> half-width, lower case, no punctuation, emoji or spaces."""
    t = unicodedata.normalize("NFKC", text).lower()
    return "".join(_KEEP.findall(t))


def _features(text: str) -> Counter[str]:
    t = unicodedata.normalize("NFKC", text).lower()
    feats: Counter[str] = Counter()
    for run in _KEEP.findall(t):
        if run.isdigit():
            feats["#"] += 1  # numbers matter as "a number", not which one
        elif run.isascii():
            feats[f"w:{run}"] += 2
            if len(run) > 3 and run.endswith("s"):
                feats[f"w:{run[:-1]}"] += 1
        else:
            for ch in run:
                feats[ch] += 1
            for a, b in zip(run, run[1:]):
                feats[a + b] += 2
    return feats


@dataclass(frozen=True)
class Route:
    """label: an entry label, "clarify" (see candidates) or "none"."""

    label: str
    score: float
    candidates: tuple[str, ...] = ()


@dataclass
class _Example:
    label: str
    norm: str
    vec: dict[str, float]
    norm2: float


class Router:
    def __init__(self, entries: dict[str, list[str]], answer_score: float = 0.6, clarify_score: float = 0.38) -> None:
        """entries: label -> example phrases (FAQ ids, "claim:damaged", "human", ...)."""
        self.answer_score = answer_score
        self.clarify_score = clarify_score
        docs = [(label, ex) for label, exs in entries.items() for ex in exs if normalize(ex)]
        df: Counter[str] = Counter()
        feats = [_features(ex) for _, ex in docs]
        for f in feats:
            df.update(f.keys())
        n = max(len(docs), 1)
        self._idf = {k: math.log(1 + n / v) for k, v in df.items()}
        self._default_idf = math.log(1 + n)
        self._examples = []
        for (label, ex), f in zip(docs, feats):
            vec = self._weigh(f)
            self._examples.append(_Example(label, normalize(ex), vec, math.sqrt(sum(v * v for v in vec.values()))))

    def _weigh(self, feats: Counter[str]) -> dict[str, float]:
        return {k: (1 + math.log(c)) * self._idf.get(k, self._default_idf) for k, c in feats.items()}

    def scores(self, text: str) -> list[tuple[str, float]]:
        """Best score per label, highest first."""
        q = self._weigh(_features(text))
        qn = math.sqrt(sum(v * v for v in q.values()))
        norm = normalize(text)
        if not qn:
            return []
        best: dict[str, float] = {}
        for ex in self._examples:
            if not ex.norm2:
                continue
            dot = sum(w * ex.vec[k] for k, w in q.items() if k in ex.vec)
            s = dot / (qn * ex.norm2)
            # A whole example phrase inside a longer message is strong evidence.
            if len(ex.norm) >= 3 and ex.norm in norm:
                s = max(s, 0.62 + 0.3 * len(ex.norm) / max(len(norm), 1))
            if s > best.get(ex.label, 0.0):
                best[ex.label] = s
        return sorted(best.items(), key=lambda kv: -kv[1])

    def route(self, text: str) -> Route:
        ranked = self.scores(text)
        if not ranked:
            return Route("none", 0.0)
        top_label, top = ranked[0]
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        if top >= self.answer_score and top - second >= 0.04:
            return Route(top_label, top, tuple(l for l, _ in ranked[:3]))
        close = tuple(l for l, s in ranked[:3] if s >= self.clarify_score)
        if close:
            return Route("clarify", top, close)
        return Route("none", top, tuple(l for l, _ in ranked[:3]))
