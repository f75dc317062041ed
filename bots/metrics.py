"""Prometheus metrics. With `kefu run --workers N` every process writes to a shared
directory (prometheus_client's multiprocess mode) and /metrics adds them up."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

EVENTS_IN = Counter("kefu_events_in_total", "Events accepted from platforms and desks", ["source"])
HANDLED = Counter("kefu_events_handled_total", "Events the engine handled", ["type"])
REPLIES_OUT = Counter("kefu_replies_out_total", "Messages delivered to buyers", ["platform"])
DESK_OUT = Counter("kefu_desk_posts_total", "Case news delivered to desks", ["desk"])
SEND_RETRIES = Counter("kefu_send_retries_total", "Sends postponed for a retry", ["target"])
SEND_FAILURES = Counter("kefu_send_failures_total", "Sends given up after the last retry", ["target"])
HANDLE_SECONDS = Histogram(
    "kefu_handle_seconds", "Engine time per event (dedupe, lock, handler, commit)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_DEPTH = Gauge("kefu_queue_depth", "Work not yet done", ["queue"], multiprocess_mode="mostrecent")


def render() -> bytes:
    if MULTIPROC:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
