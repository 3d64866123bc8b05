"""Prometheus metrics of one service, on their own registry (served at GET /metrics).

Counters and histograms are updated where things happen (sessions, turns, HTTP requests,
errors); worker state (restarts, queue depth, liveness) is read from the engines' health
reports at scrape time, so workers need no metrics code of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HealthSource = Callable[[], Iterable[dict[str, Any]]]  # each engine's health() report


class Metrics:
    """Owned by one app (tests build many apps, so no global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("fac_sessions_active", "open /api/chat sessions", registry=r)
        self.sessions = Counter("fac_sessions", "/api/chat connections by outcome",
                                ["outcome"], registry=r)
        self.turns = Counter("fac_turns", "replies by outcome (completed, interrupted, failed)",
                             ["outcome"], registry=r)
        self.first_audio = Histogram("fac_first_audio_seconds",
                                     "end of the user turn to the first reply audio sent",
                                     buckets=LATENCY_BUCKETS_S, registry=r)
        self.requests = Histogram("fac_http_request_duration_seconds",
                                  "HTTP request durations by route, method and status",
                                  ["route", "method", "status"], registry=r)
        self.errors = Counter("fac_errors", "errors answered to clients, by kind", ["kind"],
                              registry=r)
        self.asr_audio = Counter("fac_asr_audio_seconds", "seconds of audio transcribed, by model",
                                 ["model"], registry=r)
        self.asr_rtf = Histogram("fac_asr_real_time_factor", "transcription time / audio duration",
                                 ["model"], buckets=RTF_BUCKETS, registry=r)
        self.tts_first_audio = Histogram("fac_tts_first_audio_seconds",
                                         "synthesis request to its first audio chunk, by model",
                                         ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.tts_audio = Counter("fac_tts_audio_seconds", "seconds of audio synthesised, by model",
                                 ["model"], registry=r)
        self.tts_rtf = Histogram("fac_tts_real_time_factor", "synthesis time / audio duration",
                                 ["model"], buckets=RTF_BUCKETS, registry=r)

    def watch_workers(self, health: HealthSource) -> None:
        self.registry.register(_WorkerCollector(health))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerCollector(Collector):
    def __init__(self, health: HealthSource) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily("fac_worker_restarts", "worker process restarts", labels=["worker"])
        pending = GaugeMetricFamily("fac_worker_pending", "requests queued or running in a worker",
                                    labels=["worker"])
        alive = GaugeMetricFamily("fac_worker_alive", "1 when the worker process is serving",
                                  labels=["worker"])
        for report in self._health():
            for name, worker in (report.get("workers") or {}).items():
                restarts.add_metric([name], float(worker.get("restarts", 0)))
                pending.add_metric([name], float(worker.get("pending", 0)))
                alive.add_metric([name], 1.0 if worker.get("alive") else 0.0)
        yield from (restarts, pending, alive)
