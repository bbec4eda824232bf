"""A TCP server that accepts connections and never says a word: the 'hung service' case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[int]:
    """Yield the port of a loopback server that reads nothing and answers nothing."""
    clients: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clients.append(writer)

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        # Close the accepted sockets too; server.close() only stops listening.
        for writer in clients:
            writer.close()
        server.close()
        await server.wait_closed()
