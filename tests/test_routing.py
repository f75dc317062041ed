"""Routing buyer messages: the measurement on the shared dev set runs in CI, and the
evaluation interface behaves as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from handlers.config import ShopConfig
from handlers.matcher import LexicalRouter, canonical, clauses
from handlers.semantic import MODEL_ID, SIGNALS, WEIGHTS_FILE, SemanticRouter, load_weights
from handlers.setup import build_context

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT.parent / "shared" / "eval"


def kefu_route(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bots.cli", "route", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (EVAL / "faq.yaml").exists(), reason="../shared/eval is not in this checkout")
def test_accuracy_and_false_answers_on_the_dev_set(tmp_path: Path) -> None:
    proc = kefu_route("--faq", str(EVAL / "faq.yaml"), "--eval", str(EVAL / "questions-dev.tsv"),
                      "--cache-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.rstrip().splitlines()[-1].startswith("accuracy: ")
    accuracy = float(re.search(r"^accuracy: ([0-9.]+)$", out, re.M).group(1))  # type: ignore[union-attr]
    false = float(re.search(r"^false-answer rate: ([0-9.]+)$", out, re.M).group(1))  # type: ignore[union-attr]
    assert "SemanticRouter" in out
    # The goal (issue 5): >= 0.92 with <= 0.04 false answers. Measured 0.950 / 0.000 with the
    # phrasing bank (0.894 / 0.031 without it, same weights).
    assert accuracy >= 0.92 and false <= 0.04, out


@pytest.mark.skipif(not (EVAL / "faq.yaml").exists(), reason="../shared/eval is not in this checkout")
@pytest.mark.parametrize(("name", "least"), [("eval-shop-heldout", 0.86), ("eval-shop-heldout2", 0.80)])
def test_messages_written_independently_for_the_same_shop(tmp_path: Path, name: str, least: float) -> None:
    """bench/data/eval-shop-heldout*.tsv: 240 and 200 buyer messages for ../shared/eval/faq.yaml,
    each set written by someone who saw neither questions-dev.tsv, the bank nor the other set;
    never trained on. Measured 0.887 / 0.021 and 0.835 / 0.015 (0.754 / 0.092 and 0.720 / 0.060
    without the bank)."""
    proc = kefu_route("--faq", str(EVAL / "faq.yaml"), "--eval", str(ROOT / "bench" / "data" / f"{name}.tsv"),
                      "--cache-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    accuracy = float(re.search(r"^accuracy: ([0-9.]+)$", proc.stdout, re.M).group(1))  # type: ignore[union-attr]
    false = float(re.search(r"^false-answer rate: ([0-9.]+)$", proc.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert accuracy >= least and false <= 0.04, proc.stdout


def test_hand_written_buyer_messages_for_the_sample_shop(tmp_path: Path) -> None:
    """bench/data holds buyer messages written for kefu's own shop (used to choose the bands)."""
    ctx = build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    rows = [line.rsplit("\t", 1) for line in (ROOT / "bench" / "data" / "sample-shop-messages.tsv")
            .read_text("utf-8").splitlines() if line.strip() and not line.startswith("#")]
    public = {"complaint": "human", "greeting": "none", "thanks": "none"}
    got = [public.get(lb, lb) for lb in (ctx.router.route(text).label for text, _ in rows)]
    right = sum(g == want for g, (_, want) in zip(got, rows, strict=True))
    false = sum(g not in ("none", "clarify") and g != want for g, (_, want) in zip(got, rows, strict=True))
    # Measured about 0.90 / 0.024-0.031 (bands: handlers/config.py defaults; bench/route_train.py).
    assert right / len(rows) >= 0.88 and false / len(rows) <= 0.04, list(zip(got, rows, strict=True))


def test_chat_spellings_and_run_on_messages_are_understood() -> None:
    assert canonical("亲 咋退货啊😂") == "怎么退货"
    assert canonical("木有收到发票") == "没有收到发票" and canonical("神马时候发货") == "什么时候发货"
    assert canonical("肿么用") == "怎么用" and canonical("能發順豐嘛") == "能发顺丰吗"
    assert canonical("pls help, I can't log in") == "please help, i cannot log in"
    assert clauses("收到了 里面少了一个盖子，咋办") == ["收到了", "里面少了一个盖子", "怎么办"]
    assert clauses("where is my parcel") == ["where is my parcel"]  # spaces split only Chinese


def test_cantonese_as_hong_kong_buyers_type_it(tmp_path: Path) -> None:
    assert canonical("點解仲未發貨？等咗好耐") == "为什么还没发货?等了很久"
    assert canonical("呢個係咪正貨嚟㗎") == "这个是不是正货来" and canonical("可唔可以平啲") == "可不可以便宜点"
    assert canonical("联系客服") == "联系客服" and canonical("发货了呢") == "发货了呢"  # Mandarin untouched
    ctx = build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    cases = {"幾耐先到": "delivery_days", "可唔可以貨到付款": "cod", "冇收到發票喎": "invoice_missing",
             "呢個係咪正貨嚟㗎": "authenticity", "寄唔寄香港㗎": "overseas", "收到嘅杯爛咗": "claim:damaged",
             "我想搵真人": "human"}
    got = {text: ctx.router.route(text).label for text in cases}
    assert got == cases


def test_the_re_ranker_weights_ship_with_the_code() -> None:
    data = json.loads(WEIGHTS_FILE.read_text("utf-8"))
    assert data["signals"] == list(SIGNALS) and data["model"] == MODEL_ID
    assert load_weights().tolist() == pytest.approx(data["weights"])


def test_one_message_and_stdin(tmp_path: Path) -> None:
    faq = tmp_path / "faq.yaml"
    faq.write_text(
        "shop: 测试店\nfaqs:\n"
        "  - id: invoice\n    title: 发票\n    questions: [能开发票吗, 发票怎么开]\n    answer: 可以开电子发票\n"
        "  - id: ship_when\n    title: 发货时间\n    questions: [什么时候发货, 多久发货]\n    answer: 48小时内发货\n"
        "intents:\n  - id: human\n  - id: none\n", "utf-8")
    one = kefu_route("--faq", str(faq), "可以开个发票吗")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == {**json.loads(one.stdout), "label": "invoice"}
    assert set(json.loads(one.stdout)) == {"label", "candidates", "score"}
    many = kefu_route("--faq", str(faq), stdin="下单后几天发货\n转人工\n3849201756382910475\n")
    labels = [json.loads(line)["label"] for line in many.stdout.splitlines()]
    assert labels == ["ship_when", "human", "none"]
    bad = kefu_route("--faq", str(tmp_path / "missing.yaml"), "x")
    assert bad.returncode == 2 and "cannot read" in bad.stderr
    assert list((Path(os.environ["XDG_CACHE_HOME"]) / "kefu").glob("embeddings-*.npz"))  # the next run reads them


def test_the_sample_shop_routes_paraphrases_not_just_shared_characters(tmp_path: Path) -> None:
    ctx = build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert isinstance(ctx.router, SemanticRouter)
    cases = {
        "下单以后多快能寄出": "ship_time", "我在乌鲁木齐 几天能收到": "delivery_days", "可以走顺丰吗": "courier",
        "退回去的邮费谁付": "return_shipping", "钱多久退到我账户": "refund_time", "開發票要怎麼弄": "invoice",
        "我打错收货地址了": "change_address", "拍错了想撤销订单": "cancel_order", "杯子寄到就裂了": "claim:damaged",
        "I want a real person": "human", "買的是紅色 寄來的是藍色": "claim:wrong_item",
    }
    routes = {q: ctx.router.route(q) for q in cases}
    answered = [q for q, want in cases.items() if routes[q].label == want]
    asked = [q for q, want in cases.items() if routes[q].label == "clarify" and routes[q].candidates[0] == want]
    wrong = {q: routes[q] for q in cases if q not in answered and q not in asked}
    # Never a wrong answer; at worst "您是不是想问" with the right entry first.
    assert not wrong and len(answered) >= len(cases) - 2, (wrong, asked)


def test_numbers_and_emoji_are_not_questions(tmp_path: Path) -> None:
    ctx = build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    for text in ("12345", "3849201756382910475", "😂😂", "？？？"):
        assert ctx.router.route(text).label == "none", text


def test_embeddings_are_cached_on_disk_by_content(tmp_path: Path) -> None:
    build_context(ShopConfig(), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    cache = list(tmp_path.glob("embeddings-*.npz"))
    assert len(cache) == 1 and cache[0].stat().st_size > 100_000


def test_the_lexical_router_is_there_when_asked_for(tmp_path: Path) -> None:
    ctx = build_context(ShopConfig(route_method="lexical"), None, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert isinstance(ctx.router, LexicalRouter)
    assert ctx.router.route("能开发票吗").label == "invoice"
