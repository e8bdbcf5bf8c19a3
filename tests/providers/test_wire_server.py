"""The wire server also runs on its own, as `python -m tests.providers.wire_servers`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


async def test_runs_as_a_module_on_a_port_it_prints() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.providers.wire_servers", "--port", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).json() == {"status": "ok"}
            body = {"model": "text-2", "messages": [], "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = [line async for line in response.aiter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert sum('"content": "w' in line for line in lines) == 2
    finally:
        proc.terminate()
        await proc.wait()
