"""Real kefu processes for tests: `kefu run --role web` and `kefu worker` on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANNER = re.compile(r"buyer chat:\s+(http://\S+?)/\s*$")


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.args, self.env, self.log_path, self.ready = args, env, log, ready
        self.base = ""
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "bots.cli", *self.args], cwd=ROOT, env=self.env,
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        seen = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"kefu {' '.join(self.args)} exited: {self.log_path.read_text()[-2000:]}")
            seen += line
            m = BANNER.search(line)
            if m:
                self.base = m.group(1)
            if self.ready in line:
                return
        raise AssertionError(f"kefu {' '.join(self.args)} did not start: {seen}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def kefu_env(redis_url: str, namespace: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env.update({
        "KEFU_REDIS_URL": redis_url, "KEFU_REDIS_NAMESPACE": namespace, "KEFU_DATA_DIR": str(data_dir),
        "KEFU_HOURS_OPEN": "00:00", "KEFU_HOURS_CLOSE": "00:00", "KEFU_DESK_TOKEN": "test-desk-token",
        "KEFU_ADMIN_TOKEN": "test-admin-token", "KEFU_LOG_LEVEL": os.environ.get("KEFU_TEST_LOG_LEVEL", "WARNING"), "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


def web(env: dict[str, str], logs: Path) -> Proc:
    return Proc(["run", "--role", "web", "--port", "0"], env, logs / "web.log", "Press Ctrl+C")


def worker(env: dict[str, str], logs: Path, n: int) -> Proc:
    return Proc(["worker"], env, logs / f"worker{n}.log", "kefu worker")


def problems(procs: list[Proc], limit: int = 30) -> str:
    """The warnings and errors the processes logged (their last `limit` lines each), for a failure message."""
    out = []
    for p in procs:
        try:
            lines = [ln for ln in p.log_path.read_text(errors="replace").splitlines()
                     if " WARNING " in ln or " ERROR " in ln or "Error" in ln]
        except OSError:
            continue
        out.append(f"--- {p.log_path.name}: {len(lines)} lines\n" + "\n".join(ln[:300] for ln in lines[-limit:]))
    return "\n".join(out)
