"""DingTalk Stream mode: the official `dingtalk-stream` SDK in a thread of its own.

The SDK makes blocking calls (requests) inside its own event loop, so it gets a
thread and a loop that are not kefu's. Each robot message frame is handed to
kefu's loop to be stored (the adapter's `accept`) and ACKed only after that; the
slow part runs later in the ingress worker. The SDK reads the gateway's address
from DINGTALK_OPENAPI_ENDPOINT when it is imported: kefu sets it from
`dingtalk_api_url` unless the environment already has it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any, Awaitable, Callable

log = logging.getLogger("kefu.dingtalk")
# The SDK warns about every gateway ping ("unknown message topic"); its errors (a failed connect) still show.
logging.getLogger("kefu.dingtalk.sdk").setLevel(logging.ERROR)

ACK_TIMEOUT = 10.0  # seconds to store a frame; beyond it DingTalk is told to deliver it again


class StreamLink:
    def __init__(self, app_key: str, app_secret: str, api_url: str,
                 accept: Callable[[dict[str, Any]], Awaitable[bool]], loop: asyncio.AbstractEventLoop) -> None:
        self.app_key, self.app_secret, self.api_url = app_key, app_secret, api_url.rstrip("/")
        self.accept = accept
        self.main_loop = loop
        self._thread: threading.Thread | None = None
        self._sdk_loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kefu-dingtalk-stream", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    def stop(self) -> None:
        """Blocking: close the connection and end the SDK's thread (call it off the loop)."""
        if self._sdk_loop is not None and self._stop is not None:
            self._sdk_loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("dingtalk stream thread ended")
        finally:
            self._ready.set()

    async def _main(self) -> None:
        os.environ.setdefault("DINGTALK_OPENAPI_ENDPOINT", self.api_url)
        import dingtalk_stream
        from dingtalk_stream import AckMessage, CallbackHandler, ChatbotMessage

        if dingtalk_stream.utils.DINGTALK_OPENAPI_ENDPOINT.rstrip("/") != self.api_url:
            log.warning("the dingtalk-stream SDK uses DINGTALK_OPENAPI_ENDPOINT, not dingtalk_api_url")
        link = self

        class Handler(CallbackHandler):  # type: ignore[misc]
            async def process(self, message: Any) -> tuple[int, str]:
                data = message.data if isinstance(message.data, dict) else {}
                async def store() -> bool:
                    return await link.accept(data)

                fut: concurrent.futures.Future[bool] = asyncio.run_coroutine_threadsafe(store(), link.main_loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(fut), ACK_TIMEOUT)
                except ValueError as exc:  # not a robot message: nothing to deliver again
                    log.warning("dingtalk stream frame refused: %s", exc)
                    return AckMessage.STATUS_BAD_REQUEST, str(exc)
                except Exception as exc:  # the store is down: not ACKed as done, DingTalk delivers it again
                    log.warning("dingtalk stream frame not stored: %s", exc.__class__.__name__)
                    return AckMessage.STATUS_SYSTEM_EXCEPTION, "not stored, please retry"
                return AckMessage.STATUS_OK, "OK"

        client = dingtalk_stream.DingTalkStreamClient(
            dingtalk_stream.Credential(self.app_key, self.app_secret), logger=logging.getLogger("kefu.dingtalk.sdk"))
        client.register_callback_handler(ChatbotMessage.TOPIC, Handler())
        self._sdk_loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        task = asyncio.ensure_future(client.start())
        await self._stop.wait()
        # Closing the socket makes the SDK log a "network exception": expected here, not worth an error line.
        logging.getLogger("kefu.dingtalk.sdk").disabled = True
        ws = client.websocket
        if ws is not None:
            try:
                await ws.close()
            except Exception:
                pass
        # The SDK's loop swallows one cancellation (it sleeps and reconnects): cancel until it ends.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.2)
        logging.getLogger("kefu.dingtalk.sdk").disabled = False
