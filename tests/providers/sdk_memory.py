"""USS of a fresh Python process after importing each vendor SDK and building its client.

    python -m tests.providers.sdk_memory

Each line is its own process: the baseline imports the provider layer only; the others also
build the provider's SDK client (what the first call of a run does), without any request.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import asyncio, json, psutil
from rayruns.providers.catalog import make_provider
from rayruns.providers.settings import ProviderSettings

vendor = {vendor!r}

async def build() -> None:
    if vendor:
        fields = {{f"{{vendor}}_api_key": "k", f"{{vendor}}_base_url": "http://127.0.0.1:9"}}
        make_provider(vendor, ProviderSettings(**fields))._clients.get()

asyncio.run(build())
info = psutil.Process().memory_full_info()
print(json.dumps({{"uss": info.uss, "rss": info.rss}}))
"""


def measure(vendor: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(vendor=vendor)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout)
    return result


def main() -> None:
    base = measure("")
    mib = 1024 * 1024
    print(f"{'process':<22}{'USS MiB':>9}{'+ vs base':>11}{'RSS MiB':>9}")
    print(f"{'provider layer only':<22}{base['uss'] / mib:>9.1f}{'':>11}{base['rss'] / mib:>9.1f}")
    for vendor in ("openai", "anthropic", "google"):
        m = measure(vendor)
        extra = (m["uss"] - base["uss"]) / mib
        print(
            f"{vendor + ' + client':<22}{m['uss'] / mib:>9.1f}{extra:>+11.1f}{m['rss'] / mib:>9.1f}"
        )


if __name__ == "__main__":
    main()
