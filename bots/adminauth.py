"""Who may use the admin pages: a password kept only as a scrypt hash, sessions kept in the
store (so every web process on Redis knows them), a CSRF token per session, and a little
slowing down of wrong passwords.

    python -m bots.adminpages hash-password     # reads the password from stdin, prints the hash
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from state.protocol import Store

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # about 16 MB and 50 ms per check
COOKIE = "kefu_admin"
LOGIN_COOKIE = "kefu_admin_login"  # the login form's own CSRF token (double submit)
COOKIE_PATH = "/admin"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """"scrypt$n$r$p$salt$hash" (base64), with a random salt."""
    salt = secrets.token_bytes(16)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p))}"


def verify_password(password: str, encoded: str) -> bool:
    """CPU-heavy (scrypt): call it in a thread."""
    try:
        scheme, n, r, p, salt, digest = encoded.strip().split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest)
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def _digest(sid: str) -> str:
    # The store keeps a digest only: reading the store does not give anyone a live session.
    return hashlib.sha256(sid.encode("ascii", "replace")).hexdigest()


def meta_key(sid: str) -> str:
    return f"admin_session:{_digest(sid)}"


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: float

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.csrf.encode())


class Sessions:
    """Random session ids; the record (user, CSRF token, expiry) lives in the store's meta table.

    An ended or expired session keeps an empty record (the store protocol has no delete):
    one small row per login."""

    def __init__(self, store: Store, hours: float) -> None:
        self.store = store
        self.seconds = hours * 3600

    async def start(self, user: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(user=user, csrf=secrets.token_urlsafe(24), expires=time.time() + self.seconds)
        await self.store.set_meta(meta_key(sid), json.dumps(
            {"user": session.user, "csrf": session.csrf, "expires": session.expires}, ensure_ascii=False))
        return sid, session

    async def get(self, sid: str | None) -> Session | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not sid or len(sid) > 128:
            return None
        raw = await self.store.get_meta(meta_key(sid))
        if not raw:
            return None
        try:
            data = json.loads(raw)
            session = Session(user=str(data["user"]), csrf=str(data["csrf"]), expires=float(data["expires"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= time.time():
            await self.store.set_meta(meta_key(sid), "")
            return None
        return session

    async def end(self, sid: str | None) -> None:
        if sid and len(sid) <= 128:
            await self.store.set_meta(meta_key(sid), "")


class LoginThrottle:
    """Wrong passwords answer more slowly the more of them come from one address (per process)."""

    def __init__(self, step: float = 0.5, most: float = 5.0, forget_after: float = 900.0) -> None:
        self.step, self.most, self.forget_after = step, most, forget_after
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, who: str) -> float:
        """Note a failure; return how long to wait before answering."""
        now = time.monotonic()
        if len(self._failures) > 10_000:  # bounded: forget the old ones
            self._failures = {k: v for k, v in self._failures.items() if now - v[1] < self.forget_after}
        count, last = self._failures.get(who, (0, now))
        count = 1 if now - last > self.forget_after else count + 1
        self._failures[who] = (count, now)
        return min(self.step * count, self.most)

    def succeeded(self, who: str) -> None:
        self._failures.pop(who, None)
