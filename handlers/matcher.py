"""Routing a buyer message to an FAQ entry, an action (claim, human, ...) or nothing.

This module holds what every router shares (normalising text, the Route
result, the Router interface) and the lexical router: character uni/bi-grams
for Chinese, words for English, BM25 against each label's pooled examples,
the score divided by the best score the message could reach. It is the
fallback when the semantic router (handlers/semantic.py) cannot load, and one
of its signals when it can.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import opencc

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_KEEP = re.compile(rf"[{_CJK}]+|[a-z]+|\d+")
K1, B = 1.2, 0.75


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


@lru_cache(maxsize=4096)
def simplify(text: str) -> str:
    """Full-width -> half-width, Traditional -> Simplified Chinese, lower case (punctuation kept)."""
    return _t2s().convert(unicodedata.normalize("NFKC", text)).lower()


def normalize(text: str) -> str:
    """simplify() without punctuation, emoji or spaces: for comparing phrases."""
    return "".join(_KEEP.findall(simplify(text)))


# Chat spellings buyers use for ordinary words (网络用语, dialect, typing shortcuts). Whole
# replacements, longest first; applied the same way to examples and messages.
_SLANG = {
    "肿么": "怎么", "怎莫": "怎么", "咋": "怎么", "神马": "什么", "虾米": "什么", "啥": "什么", "木有": "没有",
    "米有": "没有", "么有": "没有", "没得": "没有", "酱紫": "这样子", "灰常": "非常", "介个": "这个",
    "稀饭": "喜欢", "童鞋": "同学", "滴说": "的说", "肿么办": "怎么办", "神马时候": "什么时候",
    "发个货": "发货", "退个货": "退货",
    # Cantonese as Hong Kong buyers type it (after Traditional -> Simplified); only words that
    # are not also ordinary Mandarin.
    "点解": "为什么", "仲未": "还没", "仲": "还", "咗": "了", "冇": "没有", "有冇": "有没有",
    "系咪": "是不是", "系唔系": "是不是", "可唔可以": "可不可以", "得唔得": "行不行", "唔该": "麻烦",
    "唔使": "不用", "唔": "不", "嘅": "的", "喺": "在", "睇": "看", "呢个": "这个", "呢件": "这件",
    "呢款": "这款", "呢啲": "这些", "嗰个": "那个", "嗰啲": "那些", "啲": "点", "边度": "哪里",
    "边个": "哪个", "几时": "什么时候", "几耐": "多久", "好耐": "很久", "几多钱": "多少钱", "几钱": "多少钱",
    "几多": "多少", "乜嘢": "什么", "咩": "什么", "嚟": "来", "佢": "他", "揾": "找", "畀": "给", "攞": "拿",
    "点样": "怎么样", "而家": "现在", "咁": "这么", "㗎": "", "喎": "", "㖞": "", "平啲": "便宜点",
}
_SLANG_RE = re.compile("|".join(sorted(map(re.escape, _SLANG), key=len, reverse=True)))
_EN_SLANG = {"u": "you", "ur": "your", "pls": "please", "plz": "please", "thx": "thanks", "im": "i am",
             "dont": "do not", "cant": "cannot", "wont": "will not", "didnt": "did not", "hasnt": "has not"}
_EN_RE = re.compile(r"\b(" + "|".join(_EN_SLANG) + r")\b")
_SEP = r"\s，,。.!！?？;；~～、…:：()（）\[\]【】\"'“”‘’"
# Sentence-final particles that carry tone, not meaning; a lone 亲 (dear) at a clause start.
_TAIL = re.compile(rf"(?<=[{_CJK}])[啊呀哈哦噢啦嘞哇吖咯喔撒]+(?=[{_SEP}]|$)")
_DEAR = re.compile(rf"(^|[{_SEP}])亲+(爱的)?(?=[{_SEP}]|$)")
_QEND = re.compile(rf"(?<![什怎这那多要])[么嘛](?=[{_SEP}]|$)")
_SYMBOLS = re.compile(r"[^\w\s，,。.!！?？;；~～、…:：()（）'’]")


@lru_cache(maxsize=8192)
def canonical(text: str) -> str:
    """simplify(), then emoji and symbols out, chat spellings and tone particles to plain words:
    what the routers compare (the same function for examples and messages)."""
    t = _SYMBOLS.sub(" ", simplify(text))
    t = _SLANG_RE.sub(lambda m: _SLANG[m.group(0)], t)
    t = _EN_RE.sub(lambda m: _EN_SLANG[m.group(1)], t.replace("'", "").replace("’", ""))
    t = _DEAR.sub(r"\1", t)
    t = _QEND.sub("吗", t)
    t = _TAIL.sub("", t)
    return re.sub(r"\s+", " ", t).strip()


_CLAUSE_SPLIT = re.compile(rf"[{_SEP[:2]}]*[，,。.!！?？;；~～、…]+[{_SEP[:2]}]*|(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")


def clauses(text: str) -> list[str]:
    """The parts of a run-on message (split at punctuation, and at spaces next to Chinese),
    canonical, keeping those with something to say."""
    parts = [p.strip() for p in _CLAUSE_SPLIT.split(canonical(text))]
    return [p for p in parts if len(_KEEP.findall(p)) and len("".join(_KEEP.findall(p))) >= 2]


def features(text: str) -> Counter[str]:
    t = canonical(text)
    feats: Counter[str] = Counter()
    for run in _KEEP.findall(t):
        if run.isdigit():
            continue  # which number says nothing about the question (order numbers, sizes)
        if run.isascii():
            feats[f"w:{run}"] += 1
            if len(run) > 3 and run.endswith("s"):
                feats[f"w:{run[:-1]}"] += 1
        else:
            feats.update(run)
            feats.update(a + b for a, b in zip(run, run[1:]))
    return feats


@dataclass(frozen=True)
class Route:
    """label: an entry label, "clarify" (see candidates) or "none"."""

    label: str
    score: float
    candidates: tuple[str, ...] = ()


class Router(Protocol):
    """What the handler needs from a router."""

    answer_score: float
    clarify_score: float

    def scores(self, text: str) -> list[tuple[str, float]]: ...

    def route(self, text: str) -> Route: ...

    def is_example(self, text: str) -> bool: ...


class LexicalRouter:
    def __init__(self, entries: dict[str, list[str]], answer_score: float = 0.22, clarify_score: float = 0.3,
                 margin: float = 0.3) -> None:
        """entries: label -> example phrases (FAQ ids, "claim:damaged", "human", ...)."""
        self.answer_score = answer_score
        self.clarify_score = clarify_score
        self.margin = margin
        self._docs: dict[str, Counter[str]] = {}
        self._exact: dict[str, str] = {}  # an example typed exactly (give or take punctuation)
        for label, examples in entries.items():
            doc: Counter[str] = Counter()
            for ex in examples:
                doc.update(features(ex))
                self._exact.setdefault(normalize(ex), label)
            if doc:
                self._docs[label] = doc
        n = max(len(self._docs), 1)
        df: Counter[str] = Counter()
        for doc in self._docs.values():
            df.update(doc.keys())
        self._idf = {k: math.log(1 + (n - v + 0.5) / (v + 0.5)) for k, v in df.items()}
        self._len = {label: sum(doc.values()) for label, doc in self._docs.items()}
        self._avg = sum(self._len.values()) / n if self._len else 1.0

    def scores(self, text: str) -> list[tuple[str, float]]:
        """Score per label in 0..1, highest first."""
        q = features(text)
        known = [k for k in q if k in self._idf]
        if not known:
            return []
        # The most a label could score: every known feature at saturation.
        ceiling = sum(self._idf[k] * (K1 + 1) for k in known)
        out: list[tuple[str, float]] = []
        for label, doc in self._docs.items():
            norm = K1 * (1 - B + B * self._len[label] / self._avg)
            s = 0.0
            for k in known:
                tf = doc.get(k)
                if tf:
                    s += self._idf[k] * tf * (K1 + 1) / (tf + norm)
            if s:
                out.append((label, s / ceiling))
        out.sort(key=lambda kv: -kv[1])
        return out

    def is_example(self, text: str) -> bool:
        """Is this (give or take punctuation) one of the example phrases?"""
        return normalize(text) in self._exact

    def route(self, text: str) -> Route:
        ranked = self.scores(text)
        if not ranked:
            return Route("none", 0.0)
        norm = normalize(text)
        exact = self._exact.get(norm)
        if exact is not None:
            return Route(exact, 1.0, tuple(dict.fromkeys([exact, *(label for label, _ in ranked[:2])])))
        if len(norm) < 2:
            return Route("none", 0.0)  # one character says too little to act on
        top_label, top = ranked[0]
        second = ranked[1][1] if len(ranked) > 1 else 0.0
        top3 = tuple(label for label, _ in ranked[:3])
        if top >= self.answer_score and (top - second) >= self.margin * top:
            return Route(top_label, top, top3)
        close = tuple(label for label, s in ranked[:3] if s >= self.clarify_score and s >= top * 0.6)
        if close:
            return Route("clarify", top, close)
        return Route("none", top, top3)
