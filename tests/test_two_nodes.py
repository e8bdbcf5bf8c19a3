"""The data plane across nodes: a run actor on a second node pushes to a driver's sink over TCP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.own_ray
@pytest.mark.timeout(300)
def test_frames_from_an_actor_on_another_node_arrive_by_push(no_session_ray: None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.two_nodes_probe"],
        cwd=ROOT,
        env={**env, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1])
    assert got["actor_node"] != got["driver_node"] == got["sink_node"]
    assert got["seq_ids"] == list(range(1, len(got["seq_ids"]) + 1))
    assert got["same_as_log"] and got["kinds"][-2:] == ["stop_reason", "usage_statistics"]
    assert got["accepted"] == 1 and got["cut_short"] == 0, "pushed over TCP, no fallback"
