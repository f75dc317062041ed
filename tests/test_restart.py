"""`kefu demo` as a real process: it prints what an operator needs, and a crash in the
middle of a claim loses nothing (the embedded store is on disk)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import pytest

from tests.support import ORDER_OK, WebAgent, WebBuyer, png, texts

BANNER = re.compile(r"agent desk:\s+(http://[^/\s]+)/desk#token=(\S+)")


class Demo:
    def __init__(self, data_dir: Path) -> None:
        env = {**os.environ, "KEFU_HOURS_OPEN": "00:00", "KEFU_HOURS_CLOSE": "00:00", "KEFU_LOG_LEVEL": "WARNING"}
        env.pop("KEFU_DESK_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bots.cli", "demo", "--port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.banner = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"kefu demo exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            self.banner += line
            m = BANNER.search(line)
            if m:
                self.base, self.token = m.group(1), m.group(2)
                return
        raise AssertionError("kefu demo did not print its banner")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.kill()


async def test_demo_prints_urls_and_token_and_survives_a_crash_mid_claim(tmp_path: Path, demos: list[Demo]) -> None:
    data = tmp_path / "kefu-data"
    first = Demo(data)
    demos.append(first)
    assert "buyer chat:" in first.banner and "小满生活馆" in first.banner
    async with aiohttp.ClientSession() as http:
        buyer = WebBuyer(http, first.base, visitor="restart-visitor")
        await buyer.say("你好")
        await buyer.say("收到的碗碎了一个")
        await buyer.say(ORDER_OK)
        status, _, msgs = await buyer.photo(png())
        assert status == 200 and "收到1张照片" in texts(msgs)
        # An open case of another buyer, to see it survive too.
        other = WebBuyer(http, first.base)
        await other.say("转人工")

    first.kill(signal.SIGKILL)  # a crash, not a polite stop
    second = Demo(data)
    demos.append(second)
    assert second.token == first.token  # the generated desk token is kept
    async with aiohttp.ClientSession() as http:
        buyer = WebBuyer(http, second.base, visitor="restart-visitor")
        buyer.after = 10**9  # only what comes next
        old = await WebBuyer(http, second.base, visitor="restart-visitor").replies(wait=0)
        assert len(old) >= 4  # the messages before the crash are still there for the page
        buyer.after = old[-1]["seq"]
        msgs = await buyer.press("photos_done")
        assert "对吗" in texts(msgs) and ORDER_OK in texts(msgs) and "1张" in texts(msgs)
        assert "碗碎了一个" in texts(msgs)
        msgs = await buyer.press("confirm:yes")
        assert "K1002" in texts(msgs)
        agent = WebAgent(http, second.base, "小王", token=second.token)
        ids = sorted(c["id"] for c in await agent.cases("open"))
        assert ids == ["K1001", "K1002"]
        card = await agent.case("K1002")
        assert len(card["photos"]) == 1 and card["order_no"] == ORDER_OK
        assert any(m["text"] == ORDER_OK for m in card["transcript"])
    second.kill(signal.SIGTERM)
    assert second.proc.returncode == 0


def test_bad_settings_are_reported_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "KEFU_TIMEZONE": "Mars/Olympus"}
    proc = subprocess.run([sys.executable, "-m", "bots.cli", "demo", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and "timezone" in proc.stderr and "Mars/Olympus" in proc.stderr



def test_blank_variables_are_unset_and_malformed_lists_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bots.settings import SettingsError, load_settings

    # What docker-compose passes for `${KEFU_X:-}`: blank means "not set".
    for name in ("KEFU_WECOM_AGENTS", "KEFU_TELEGRAM_DESK_CHAT", "KEFU_PORT", "KEFU_WECOM_CORP_ID"):
        monkeypatch.setenv(name, "")
    s = load_settings(data_dir=tmp_path)
    assert s.wecom_agents == {} and s.telegram_desk_chat is None and s.port == 8080
    monkeypatch.setenv("KEFU_WORK_DAYS", "1,2,3")  # not JSON
    with pytest.raises(SettingsError, match="work_days.*JSON"):
        load_settings(data_dir=tmp_path)
