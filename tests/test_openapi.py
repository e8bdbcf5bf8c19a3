"""The OpenAPI document tells the truth: schemathesis, all checks, against the live app."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing(base_url: str) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st is not None, "schemathesis is a test dependency"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    seed = os.environ.get("RAYRUNS_SCHEMATHESIS_SEED", "20261201")
    result = subprocess.run(
        [
            st,
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{base_url}/openapi.json",
            "--checks",
            "all",
            # Timings belong in the benchmark, not in the suite: `--checks all` would hold every
            # answer to 10 s, so the limit is raised to a hang guard (requests time out at 30 s).
            "--max-response-time",
            "600",
            "--max-examples",
            "25",
            "--request-timeout",
            "30",
            "--seed",
            seed,
            "--no-color",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = "\n".join(line[:400] for line in result.stdout.splitlines())
    assert result.returncode == 0, report[-12000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or " passed" in result.stdout


def test_405_names_every_method_of_the_path(base_url: str) -> None:
    answer = httpx.delete(f"{base_url}/v1/runs")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json() == {"detail": "Method Not Allowed"}


def test_document_names_sse_and_error_bodies(base_url: str) -> None:
    doc = httpx.get(f"{base_url}/openapi.json").json()
    create = doc["paths"]["/v1/runs"]["post"]["responses"]
    assert set(create["200"]["content"]) == {"application/json", "text/event-stream"}
    stream = doc["paths"]["/v1/runs/{run_id}/stream"]["get"]["responses"]
    assert set(stream["200"]["content"]) == {"text/event-stream"}
    assert stream["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatRequest"
    )
    assert chat["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OpenAIErrorBody"
    )
