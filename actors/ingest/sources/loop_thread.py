"""A private asyncio loop on a daemon thread, so sync code can drive an aio-pika channel.

The source port is synchronous (readers run in threads and Ray tasks), while aio-pika
is asyncio; deliveries belong to the channel that received them, so one channel must
live from ``plan`` to ``ack`` on one loop. Calls may come from any thread, including
one that runs its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_JOIN_S = 5.0


class LoopThread:
    """Runs coroutines on its own loop; ``close`` stops the loop and joins the thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (or its exception)."""
        if not self.alive:
            coroutine.close()
            raise RuntimeError("the loop thread is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop (cancelling what still runs) and wait for the thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # already stopping
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_JOIN_S)
