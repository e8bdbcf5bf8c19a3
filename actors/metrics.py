"""The runtime's metrics, through `ray.util.metrics`: each node's Ray exports them on its
Prometheus endpoint (`metrics_export_port`) with the prefix `ray_`, and the dashboard shows them.

Each process records only what it sees: the registry counts runs and their ends, the run actors
time their first frame and count frames, the ingress counts its answers by status. Metric
objects are built on first use, in the process that records them (Ray needs a connected
worker). README.md lists the Prometheus query for each.
"""

from __future__ import annotations

from functools import cache

from ray.util.metrics import Counter, Gauge, Histogram

# Seconds: from a cache hit on a warm actor (milliseconds) to a slow provider (a minute).
LATENCY_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class RegistryMetrics:
    """Recorded by the registry: the runs' lives and the pool."""

    def __init__(self) -> None:
        self.started = Counter("rayruns_runs_started", "runs given an actor and started")
        self.ended = Counter(
            "rayruns_runs_ended",
            "runs recorded terminal, by status and stop reason",
            tag_keys=("status", "stop_reason"),
        )
        self.refused = Counter(
            "rayruns_refused_terminal_writes",
            "terminal writes refused because the run was already terminal",
        )
        self.live = Gauge("rayruns_live_runs", "runs created or running")
        self.pool = Gauge(
            "rayruns_run_actors", "run actors by state (idle, warming, busy)", tag_keys=("state",)
        )
        self.cancel_to_done = Histogram(
            "rayruns_cancel_to_done_seconds",
            "from a cancel reaching the registry to the run's terminal record",
            boundaries=LATENCY_BOUNDARIES,
        )

    def run_ended(self, status: str, stop_reason: str) -> None:
        self.ended.inc(tags={"status": status, "stop_reason": stop_reason})

    def sample(self, live: int, idle: int, warming: int) -> None:
        self.live.set(live)
        self.pool.set(idle, tags={"state": "idle"})
        self.pool.set(warming, tags={"state": "warming"})
        self.pool.set(live, tags={"state": "busy"})


class RunActorMetrics:
    """Recorded by run actors: how soon runs produce, how fast frames flow."""

    def __init__(self) -> None:
        self.first_frame = Histogram(
            "rayruns_time_to_first_frame_seconds",
            "from a run's start on its actor to its first frame",
            boundaries=LATENCY_BOUNDARIES,
        )
        self.frames = Counter("rayruns_frames", "frames logged by runs")


class HttpMetrics:
    """Recorded by the ingress: its answers by status (429: refused for load)."""

    def __init__(self) -> None:
        self.responses = Counter(
            "rayruns_http_responses", "HTTP answers by status code", tag_keys=("status",)
        )


@cache
def registry_metrics() -> RegistryMetrics:
    return RegistryMetrics()


@cache
def run_actor_metrics() -> RunActorMetrics:
    return RunActorMetrics()


@cache
def http_metrics() -> HttpMetrics:
    return HttpMetrics()
