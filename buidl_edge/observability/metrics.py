"""Prometheus metrics built from worker snapshots, through prometheus_client.

One collector serves both cases: a standalone worker passes its own live
snapshot; `buidl-edge run` passes the snapshots every worker of the dyno
already publishes to the store with its heartbeat. Counters are the workers'
own running totals, labelled by process (and connection), so a restarted
worker starts its series again from zero, as Prometheus expects of a counter.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

Snapshot = Mapping[str, Any]
NAMESPACE = "buidl"


def process_label(snapshot: Snapshot) -> str:
    return str(snapshot.get("process") or f"pid{snapshot.get('pid', '?')}")


class SnapshotCollector(Collector):
    """Yields every buidl-edge metric from `snapshots()` (called once per scrape)."""

    def __init__(self, snapshots: Callable[[], Iterable[Snapshot]],
                 outbox: Callable[[], Mapping[str, Any] | None] | None = None) -> None:
        self._snapshots = snapshots
        self._outbox = outbox

    def collect(self) -> Iterator[Metric]:
        snaps = list(self._snapshots())
        yield from _connection_metrics(snaps)
        yield from _process_metrics(snaps)
        yield from _relay_metrics(snaps)
        if self._outbox is not None:
            try:
                stats = self._outbox()
            except Exception:  # a failing store shows as store_degraded; the scrape still answers
                stats = None
            yield from _outbox_depth(stats)


def _family(kind: type, name: str, doc: str, labels: list[str]) -> Any:
    return kind(f"{NAMESPACE}_{name}", doc, labels=labels)


def _connection_metrics(snaps: list[Snapshot]) -> Iterator[Metric]:
    labels = ["process", "connection"]
    counters = {
        "envelopes_received": (_family(CounterMetricFamily, "envelopes_received",
                                       "Envelopes read from Slack.", labels)),
        "envelopes_acked": _family(CounterMetricFamily, "envelopes_acked", "Envelopes acked to Slack.", labels),
        "envelopes_rejected": _family(CounterMetricFamily, "envelopes_rejected",
                                      "Frames rejected as malformed (never acked).", labels),
    }
    up = _family(GaugeMetricFamily, "connection_up", "1 while the connection has an open link.", labels)
    reconnects = _family(CounterMetricFamily, "reconnects", "Links ended, by why they ended.",
                         labels + ["reason"])
    latency = _family(HistogramMetricFamily, "ack_latency_seconds",
                      "From reading an envelope to writing its ack.", labels)
    for snap in snaps:
        process = process_label(snap)
        for conn in snap.get("connections") or []:
            values = [process, str(conn.get("name", "?"))]
            for key, family in counters.items():
                family.add_metric(values, float(conn.get(key) or 0))
            up.add_metric(values, 1.0 if conn.get("connected") else 0.0)
            for reason, count in sorted((conn.get("link_ends") or {}).items()):
                reconnects.add_metric(values + [str(reason)], float(count))
            hist = conn.get("ack_latency")
            if hist and hist.get("buckets"):
                latency.add_metric(values, _cumulative(hist), sum_value=float(hist.get("sum") or 0.0))
    yield from counters.values()
    yield from (up, reconnects, latency)


def _cumulative(hist: Mapping[str, Any]) -> list[tuple[str, float]]:
    bounds = [str(b) for b in hist["buckets"]] + ["+Inf"]
    running, out = 0, []
    for bound, count in zip(bounds, hist.get("counts") or []):
        running += count
        out.append((bound, float(running)))
    return out


# (snapshot section, key, metric name, help)
_PROCESS_COUNTERS = (
    ("dispatch", "envelopes_new", "envelopes_new", "Envelopes claimed for the first time (handled here)."),
    ("dispatch", "duplicates", "envelopes_duplicate", "Envelopes acked and dropped as already seen."),
    ("dispatch", "handler_errors", "handler_errors", "Handler runs that raised."),
    ("dispatch", "recovered", "envelopes_recovered", "Envelopes re-run after their worker died."),
    ("outbox", "sent", "outbox_sent", "Replies posted to Slack."),
    ("outbox", "failed", "outbox_failed", "Replies that failed for good."),
    ("outbox", "rate_limited", "outbox_ratelimited", "chat.postMessage answers of HTTP 429."),
    ("streams", "started", "streams_started", "Streamed answers started in Slack (ctx.stream)."),
    ("streams", "appends_sent", "stream_appends_sent", "chat.appendStream calls that landed."),
    ("streams", "appends_coalesced", "stream_appends_coalesced",
     "Appended pieces that went out in a call with others instead of one of their own."),
    ("streams", "rate_limited", "stream_ratelimited", "Stream calls answered HTTP 429."),
    ("streams", "rollovers", "stream_rollovers",
     "Streams Slack had ended (its expiry) that went on in a new streamed message."),
    ("streams", "failed", "stream_failed", "Streams ended by a refusal from Slack."),
)
_PROCESS_GAUGES = (
    ("dispatch", "handlers_running", "handlers_running", "Handlers running now."),
    ("dispatch", "handlers_queued", "handlers_queued", "Handlers waiting for a free slot in the pool."),
    ("streams", "open", "streams_open", "Streamed answers open now."),
)


def _process_metrics(snaps: list[Snapshot]) -> Iterator[Metric]:
    labels = ["process"]
    families = [(section, key, _family(CounterMetricFamily, name, doc, labels))
                for section, key, name, doc in _PROCESS_COUNTERS]
    families += [(section, key, _family(GaugeMetricFamily, name, doc, labels))
                 for section, key, name, doc in _PROCESS_GAUGES]
    degraded = _family(GaugeMetricFamily, "store_degraded",
                       "1 while the shared store fails and the worker acks on with local dedup.", labels)
    for snap in snaps:
        process = [process_label(snap)]
        for section, key, family in families:
            value = (snap.get(section) or {}).get(key)
            if value is not None:
                family.add_metric(process, float(value))
        degraded.add_metric(process, 1.0 if snap.get("degraded") else 0.0)
    yield from (family for _, _, family in families)
    yield degraded


# Relay mode: (snapshot key, metric name, help).
_RELAY_COUNTERS = (
    ("sent", "relay_sent", "Envelopes delivered to the app behind the relay (any 2xx)."),
    ("retried", "relay_retried", "Deliveries to the app that failed and are tried again."),
    ("failed", "relay_failed", "Envelopes the relay could not deliver, for good (left failed in the inbox)."),
    ("rate_limited", "relay_ratelimited", "HTTP 429 answers from the app."),
    ("late_answers", "relay_late_answers", "Answers from the app that came after the ack deadline."),
)


def _relay_metrics(snaps: list[Snapshot]) -> Iterator[Metric]:
    labels = ["process"]
    counters = [(key, _family(CounterMetricFamily, name, doc, labels)) for key, name, doc in _RELAY_COUNTERS]
    in_flight = _family(GaugeMetricFamily, "relay_in_flight", "Deliveries to the app in flight now.", labels)
    latency = _family(HistogramMetricFamily, "relay_backend_latency_seconds",
                      "From posting a request to the app to its answer.", labels)
    recent = _family(GaugeMetricFamily, "relay_backend_latency_recent_seconds",
                     "The app's answer time over the last 1000 deliveries, at the quantile.", labels + ["quantile"])
    for snap in snaps:
        relay = snap.get("relay")
        if not relay:
            continue
        process = [process_label(snap)]
        for key, family in counters:
            family.add_metric(process, float(relay.get(key) or 0))
        in_flight.add_metric(process, float(relay.get("in_flight") or 0))
        hist = relay.get("latency")
        if hist and hist.get("buckets"):
            latency.add_metric(process, _cumulative(hist), sum_value=float(hist.get("sum") or 0.0))
        for quantile, key in (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms")):
            if relay.get(key) is not None:
                recent.add_metric(process + [quantile], float(relay[key]) / 1000)
    yield from (family for _, family in counters)
    yield from (in_flight, latency, recent)


def _outbox_depth(stats: Mapping[str, Any] | None) -> Iterator[Metric]:
    if not stats:
        return
    depth = GaugeMetricFamily(f"{NAMESPACE}_outbox_depth", "Replies queued and not yet sent (shared store).")
    depth.add_metric([], float(stats.get("depth") or 0))
    yield depth


def registry_for(collector: SnapshotCollector) -> CollectorRegistry:
    """A registry of our own: the default one would add this process's own Python metrics,
    which under `run` describe supervisord's process, not the workers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
