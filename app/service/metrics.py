"""Prometheus metrics, read from the job database at scrape time (true for every worker on every machine)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from app.service.store import JobState, JobStore

__all__ = ["registry"]


class _JobCollector(Collector):
    def __init__(self, store: JobStore, queue: Any) -> None:
        self.store, self.queue = store, queue

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts_by_state()
        jobs = GaugeMetricFamily("gadsynth_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        depth = GaugeMetricFamily("gadsynth_queue_depth", "Messages waiting in the job queue.")
        depth.add_metric([], self.queue.depth())
        yield depth
        totals = self.store.totals()
        received = CounterMetricFamily("gadsynth_received_bytes", "Bytes of DICOM received in studies.")
        received.add_metric([], totals["bytes_received"])
        yield received
        studies = CounterMetricFamily("gadsynth_studies", "Studies synthesized, by model.", labels=["model"])
        for model, count in sorted(totals["per_model"].items()):
            studies.add_metric([model], count)
        yield studies
        stages = SummaryMetricFamily(
            "gadsynth_stage_duration_seconds", "Time per pipeline stage, jobs in the database.", labels=["stage"]
        )
        for stage, seconds in sorted(totals["stages"].items()):
            stages.add_metric([stage], count_value=len(seconds), sum_value=sum(seconds))
        yield stages


def registry(store: JobStore, queue: Any) -> CollectorRegistry:
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(_JobCollector(store, queue))
    return collectors
