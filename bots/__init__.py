"""Adapters to the outside world (web chat, web desk, later Telegram/WeCom/DingTalk),
the dispatcher that sends the outbox through them, the aiohttp app and the CLI."""
