"""Settings from a TOML file and `KEFU_*` environment variables (env wins).

    KEFU_SHOP_NAME=小满生活馆 kefu demo
    kefu demo --config kefu.toml      # or KEFU_CONFIG=kefu.toml

Every field below is a setting; its env name is KEFU_ + the field name in
capitals (lists as JSON, e.g. KEFU_WORK_DAYS='[1,2,3,4,5]').
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings import SettingsError as SourceError
from redis.asyncio import ConnectionPool

from handlers.config import ShopConfig
from state.redisconn import SENTINEL_SCHEMES, BadRedisURL, parse_sentinel


class Settings(BaseSettings, ShopConfig):
    # A blank variable (docker-compose passes `${X:-}`) means "not set", for every setting.
    model_config = SettingsConfigDict(env_prefix="KEFU_", extra="ignore", case_sensitive=False, env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("kefu-data")
    templates_dir: Path | None = None
    public_url: str = ""  # how buyers and agents reach this server (printed, used in links)
    desk_token: SecretStr | None = None  # generated and kept in the store when unset
    admin_token: SecretStr | None = None  # for /api/admin; generated and kept when unset
    # The /admin pages: a scrypt hash (python -m bots.adminpages hash-password), or a plain
    # password from the environment only (KEFU_ADMIN_PASSWORD), hashed in memory at start.
    admin_password_hash: str | None = None
    admin_password: SecretStr | None = None
    admin_session_hours: float = Field(default=8.0, gt=0)
    admin_locale: str = "zh-CN"  # the language of the admin pages
    redis_url: str = ""  # set: Redis store (several processes); unset: embedded SQLite in data_dir
    redis_namespace: str = "kefu"
    ingress_partitions: int = 16  # lanes hash to partitions; one process handles a partition at a time
    max_photo_mb: float = 10.0
    log_level: str = "INFO"
    send_max_attempts: int = 8
    # Telegram (a channel starts with `kefu run` when its token is set)
    telegram_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org/bot"
    telegram_file_url: str | None = None  # default: the API URL with /file/bot
    telegram_desk_chat: int | None = None  # the agents' group (a forum supergroup gets a topic per case)
    telegram_webhook_url: str = ""  # set: webhook mode at this public URL (path /api/telegram/webhook)
    telegram_webhook_secret: SecretStr | None = None  # generated and kept when unset
    telegram_poll_timeout: int = 25
    # WeCom (企业微信 + 微信客服): starts with `kefu run` when corp id, secret, token and AES key are set
    wecom_corp_id: str = ""
    wecom_secret: SecretStr | None = None  # the self-built app allowed to call 微信客服 (and to message agents)
    wecom_token: SecretStr | None = None  # the callback Token
    wecom_aes_key: SecretStr | None = None  # the callback EncodingAESKey
    wecom_agent_id: int | None = None  # that app's AgentId: agents write to it, kefu answers through it
    wecom_open_kfid: str = ""  # the 微信客服 account
    wecom_api_url: str = "https://qyapi.weixin.qq.com/cgi-bin/"
    wecom_robot_key: SecretStr | None = None  # the agents' group robot webhook key: case cards go there
    wecom_agents: dict[str, str] = {}  # kefu agent name -> WeCom userid (those take chats in WeCom itself)
    wecom_handoff_pool: bool = False  # a new case moves the kf session to the pool (2) instead of the bot
    # DingTalk (钉钉): starts with `kefu run` when app key and app secret are set
    dingtalk_app_key: str = ""  # the app's AppKey (Client ID)
    dingtalk_app_secret: SecretStr | None = None  # AppSecret (Client Secret): callback signatures, access tokens
    dingtalk_robot_code: str = ""  # the robot's robotCode; default: the AppKey
    dingtalk_mode: Literal["stream", "http"] = "stream"  # Stream (no public URL) or HTTP callbacks
    dingtalk_api_url: str = "https://api.dingtalk.com"
    dingtalk_oapi_url: str = "https://oapi.dingtalk.com"  # the older API (media upload)
    dingtalk_desk_conversation: str = ""  # openConversationId of the agents' group (the robot is a member)
    dingtalk_desk_webhook: SecretStr | None = None  # optional custom robot webhook in that group: cards go there
    dingtalk_desk_webhook_secret: SecretStr | None = None  # that robot's 加签 secret (SEC...)
    config: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = settings_cls.model_config.get("toml_file")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @field_validator("telegram_token", "telegram_webhook_secret", "desk_token", "admin_token", "telegram_desk_chat",
                     "wecom_secret", "wecom_token", "wecom_aes_key", "wecom_robot_key", "wecom_agent_id",
                     "dingtalk_app_secret", "dingtalk_desk_webhook", "dingtalk_desk_webhook_secret",
                     "admin_password", "admin_password_hash", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret_chars(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_\-]{1,256}", v.get_secret_value()):
            raise ValueError("Telegram allows 1-256 characters A-Z, a-z, 0-9, _ and - in a webhook secret")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url_form(cls, v: str) -> str:
        v = (v or "").strip()
        if not v:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme in SENTINEL_SCHEMES:
            try:
                parse_sentinel(v)
            except BadRedisURL as exc:
                raise ValueError(str(exc)) from None
        elif scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected redis://host:6379/0, rediss://…, unix:///path or "
                             "redis+sentinel://host:26379[,host2:26379]/service_name")
        else:
            try:  # builds a connection object (no network): unknown options fail here, not at start
                ConnectionPool.from_url(v).make_connection()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"not a usable Redis URL ({str(exc)[:200]})") from None
        return v

    @field_validator("admin_password_hash")
    @classmethod
    def _password_hash_format(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+", v.strip()):
            raise ValueError("expected scrypt$n$r$p$salt$hash, as printed by `python -m bots.adminpages hash-password`")
        return v.strip() if v is not None else None

    def shop(self) -> ShopConfig:
        return ShopConfig.model_validate({k: getattr(self, k) for k in ShopConfig.model_fields})


class SettingsError(ValueError):
    pass


def _no_plain_password(path: Path) -> None:
    """A plain admin password belongs in the environment only, never in a file that gets committed."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return  # the settings source reports a broken file itself
    if "admin_password" in data:
        raise SettingsError("admin_password may only come from the environment (KEFU_ADMIN_PASSWORD); "
                            "put admin_password_hash in the file (python -m bots.adminpages hash-password)")


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings; command-line overrides beat env, env beats the TOML file."""
    cls: type[Settings] = Settings
    path = Path(config) if config is not None else (Path(os.environ["KEFU_CONFIG"]) if os.environ.get("KEFU_CONFIG") else None)
    if path is not None:
        if not path.is_file():
            raise SettingsError(f"config file not found: {path}")
        _no_plain_password(path)
        # A subclass that knows its file, instead of process-wide state.
        cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": str(path)}})
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
    except SourceError as exc:  # e.g. a list or mapping setting whose value is not JSON
        raise SettingsError(f"invalid settings: {exc} (lists and mappings are JSON, e.g. '[1,2,3]')") from None
