"""`kefu route`: route buyer messages with a shop's FAQ sheet, and measure it.

    kefu route --faq faq.yaml "能开发票吗"             one JSON line
    kefu route --faq faq.yaml < messages.txt           one JSON line per input line
    kefu route --faq faq.yaml --eval questions.tsv     accuracy report, last line "accuracy: 0.xxx"

The FAQ file is the import format ({shop, faqs: [{id, title, questions, answer}], intents});
kefu's own intents (claims, a person, small talk, off-topic) come from templates/intents.
Labels printed: FAQ ids, claim:<type>, human, none, clarify (then see "candidates").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, TextIO

import yaml

from handlers.bank import bank_for
from handlers.config import ShopConfig
from handlers.matcher import Route, Router
from handlers.setup import DEFAULT_TEMPLATES, make_router
from handlers.wording import Wording

# Internal labels that are not in the FAQ import format's vocabulary.
PUBLIC = {"complaint": "human", "greeting": "none", "thanks": "none"}


class FaqFileError(ValueError):
    pass


def load_faq_file(path: Path) -> tuple[dict[str, list[str]], dict[str, str], set[str]]:
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FaqFileError(f"{path}: cannot read the FAQ file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("faqs"), list):
        raise FaqFileError(f"{path}: expected a mapping with a 'faqs' list")
    entries: dict[str, list[str]] = {}
    answers: dict[str, str] = {}
    for n, f in enumerate(data["faqs"], 1):
        if not isinstance(f, dict) or not f.get("id") or not f.get("questions"):
            raise FaqFileError(f"{path}: faq #{n} needs an id and questions")
        entries[str(f["id"])] = [str(f.get("title") or ""), *(str(q) for q in f["questions"])]
        answers[str(f["id"])] = str(f.get("answer") or "")
    intents = {str(i.get("id")) for i in data.get("intents") or [] if isinstance(i, dict)}
    return entries, answers, intents


def build(faq: Path, cfg: ShopConfig, cache_dir: Path | None) -> Router:
    entries, answers, _ = load_faq_file(faq)
    wording = Wording(DEFAULT_TEMPLATES)
    for intents in wording.intents.values():  # kefu's own actions and small talk, every language
        for label, examples in intents.items():
            entries.setdefault(label, []).extend(examples)
    bank = bank_for(DEFAULT_TEMPLATES) if cfg.route_bank else None
    return make_router(entries, answers, cfg, cache_dir, bank=bank)


def default_cache() -> Path:
    """Where `kefu route` keeps sentence vectors between runs (the FAQ's and the phrasing
    bank's: about 2 s to compute, 0.3 s to read back)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kefu"


def public(route: Route) -> dict[str, Any]:
    label = PUBLIC.get(route.label, route.label)
    cands = list(dict.fromkeys(PUBLIC.get(c, c) for c in route.candidates if PUBLIC.get(c, c) != "none"))
    return {"label": label, "candidates": cands[:3], "score": round(route.score, 4)}


def evaluate(router: Router, questions: Path, out: TextIO) -> float:
    rows = []
    for n, line in enumerate(questions.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if "\t" not in line:
            raise FaqFileError(f"{questions}:{n}: expected 'message<TAB>label'")
        text, gold = line.rsplit("\t", 1)
        rows.append((text, gold.strip()))
    times, results, first = [], [], []
    for text, gold in rows:
        t0 = time.perf_counter()
        got = public(router.route(text))["label"]
        times.append((time.perf_counter() - t0) * 1000)
        results.append((text, gold, got))
        if gold != "none":  # threshold-free quality: is the right label ranked first?
            ranked = router.scores(text)
            first.append(bool(ranked) and PUBLIC.get(ranked[0][0], ranked[0][0]) == gold)
    n = len(results)
    correct = sum(1 for _, g, p in results if g == p)
    false = sum(1 for _, g, p in results if p not in ("none", "clarify") and p != g)
    clarify = sum(1 for _, _, p in results if p == "clarify")
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _, g, p in results:
        per[g][1] += 1
        per[g][0] += g == p
    out.write(f"messages: {n}   router: {type(router).__name__}\n")
    out.write("per label (correct/total):\n")
    for label in sorted(per, key=lambda x: (-per[x][1], x)):
        ok, total = per[label]
        out.write(f"  {label:24s} {ok:3d}/{total:<3d} {ok / total:.2f}\n")
    confusion = Counter((g, p) for _, g, p in results if g != p)
    out.write("confusions (gold -> routed: count, e.g.):\n")
    examples = {(g, p): t for t, g, p in results if g != p}
    for (g, p), c in confusion.most_common():
        out.write(f"  {g} -> {p}: {c}   e.g. {examples[(g, p)]}\n")
    out.write(f"top-1 on answerable messages: {sum(first) / max(len(first), 1):.3f}\n")
    out.write(f"false-answer rate: {false / n:.3f}\n")
    out.write(f"clarify rate: {clarify / n:.3f}\n")
    out.write(f"median routing time: {statistics.median(times):.1f} ms (p95 {sorted(times)[int(0.95 * (n - 1))]:.1f} ms)\n")
    accuracy = correct / n
    out.write(f"accuracy: {accuracy:.3f}\n")
    return accuracy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kefu route", description="route buyer messages with an FAQ sheet")
    p.add_argument("--faq", type=Path, required=True, help="FAQ sheet in the import format (YAML)")
    p.add_argument("--eval", type=Path, help="a TSV of 'message<TAB>gold label' to measure")
    p.add_argument("--method", choices=["auto", "semantic", "lexical"], default="auto")
    p.add_argument("--no-bank", action="store_true", help="without kefu's phrasing bank (templates/bank)")
    p.add_argument("--cache-dir", type=Path, default=default_cache(),
                   help="embedding cache, keyed by content (default: $XDG_CACHE_HOME/kefu or ~/.cache/kefu)")
    p.add_argument("message", nargs="?", help="one message (else one per line from stdin)")
    args = p.parse_args(argv)
    cfg = ShopConfig(route_method=args.method, route_bank=not args.no_bank)
    try:
        router = build(args.faq, cfg, args.cache_dir)
        if args.eval:
            evaluate(router, args.eval, sys.stdout)
            return 0
    except FaqFileError as exc:
        print(f"kefu route: {exc}", file=sys.stderr)
        return 2
    lines = [args.message] if args.message is not None else (line.rstrip("\n") for line in sys.stdin)
    for text in lines:
        print(json.dumps(public(router.route(text)), ensure_ascii=False), flush=True)
    return 0
