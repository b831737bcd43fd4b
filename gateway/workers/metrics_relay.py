"""The workers' Prometheus metrics on the gateway's /metrics: each worker's exposition, fetched through
the ``Metrics`` RPC at scrape time, its samples labelled ``worker="host:port"`` so workers never
collide. A worker that does not answer in time is left out of that scrape, never failing it."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.workers.client import WorkerClient

log = logging.getLogger("ward.gateway.metrics")

RELAY_TIMEOUT_S = 2.0


class _Families:
    """A collector over metric families gathered for one scrape."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge(expositions: dict[str, str]) -> list[Metric]:
    """One family per metric name, holding every worker's samples with its ``worker`` label."""
    merged: dict[str, Metric] = {}
    for address, text in expositions.items():
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            log.warning("worker %s sent metrics that do not parse; left out", address)
            continue
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif target.type != family.type:
                continue  # two versions of a worker disagree on a type: keep the first
            for sample in family.samples:
                target.samples.append(Sample(sample.name, {**sample.labels, "worker": address}, sample.value,
                                             sample.timestamp, sample.exemplar))
    return list(merged.values())


async def relayed_metrics(clients: Iterable[WorkerClient]) -> bytes:
    """The workers' metrics in the text exposition format (empty when none answers)."""
    clients = {c.address: c for c in clients}

    async def fetch(client: WorkerClient) -> str | None:
        try:
            return (await client.metrics(RELAY_TIMEOUT_S)).text
        except Exception as err:  # noqa: BLE001 - a worker without metrics must not fail the scrape
            log.debug("no metrics from worker %s: %s", client.address, err)
            return None

    texts = await asyncio.gather(*(fetch(c) for c in clients.values()))
    expositions = {address: text for address, text in zip(clients, texts) if text}
    if not expositions:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(merge(expositions)))
    return generate_latest(registry)
