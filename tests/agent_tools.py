"""Server tools the tests register (`RAYRUNS_TOOLS=tests.agent_tools`). They run in run actors."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Annotated

from pydantic import Field


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend
        b: the second addend
    """
    return a + b


async def multiply(x: float, y: Annotated[float, Field(description="the multiplier")]) -> float:
    """Multiply two numbers."""
    await asyncio.sleep(0)
    return x * y


def explode(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


async def wait_forever(port: int) -> str:
    """Waits until cancelled; tells the test on `port` when it starts and when it is cancelled."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"started\n")
    await writer.drain()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        writer.write(b"cancelled\n")
        await writer.drain()
        raise
    finally:
        writer.close()
    return "never"


def block(port: int, seconds: float) -> str:
    """Blocks its thread for `seconds`; tells the test on `port` when it starts and ends."""
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"started\n")
        time.sleep(seconds)
        conn.sendall(b"finished\n")
    return "slept"


def kill_process() -> str:
    """Ends the process it runs in."""
    os._exit(17)


def _private_helper() -> None:
    """Not a tool: private names are skipped."""
