"""The platform database, from synchronous code: a private event loop on its own thread.

A training run keeps the main thread for ``Tuner.fit()``, because Tune only handles
Ctrl+C (saving the experiment so it can resume) when it runs there. The run record, the
registry and the Lake API are async; ``Recorder`` runs them on a loop of its own, so
the driver can call them from anywhere, Tune's callbacks included.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, TypeVar

from cluster.db.forge_store import ForgeStores, open_forge_stores
from cluster.settings import Settings

T = TypeVar("T")


class Recorder:
    """``call`` runs a coroutine on the recorder's loop and returns its result."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="forge-recorder", daemon=True
        )
        self._stack = AsyncExitStack()
        self._stores: ForgeStores | None = None

    @property
    def stores(self) -> ForgeStores:
        """The run store and the registry store (open while the recorder is)."""
        if self._stores is None:
            raise RuntimeError("use the Recorder in a with block")
        return self._stores

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the recorder's loop; its result, or its exception, comes back."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> Recorder:
        self._thread.start()
        self._stores = self.call(self._stack.enter_async_context(open_forge_stores(self.settings)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.call(self._stack.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
