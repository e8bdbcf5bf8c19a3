"""Server CPU per delivered frame, for rayruns and the baseline, from the stream points.

cpu_per_frame_ms = the server's CPU over the measured window (all of its processes, 100 % = one
core) ÷ the frames delivered in that window. At 20 streams × 50 frames/s by default: the load
the issue names, far from saturation on both sides.
"""

from __future__ import annotations

from typing import Any

CPU_POINT = "20"


def cpu_per_frame_ms(raw: dict[str, Any], point: str = CPU_POINT) -> float | None:
    measured = raw.get("streams", {}).get(point)
    # No server CPU (the load generator was not given the server's pids): not measured.
    if not measured or not measured.get("frames_in_window") or not measured.get("server_cpu_pct"):
        return None
    cpu_s = measured["server_cpu_pct"] / 100 * measured["window_s"]
    return round(cpu_s / measured["frames_in_window"] * 1000, 4)


def cpu_ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours is not None and theirs else None
