"""Prometheus metrics of the server (``--metrics-port``), through prometheus-client.

* ``unstoppable_server_requests_total{api}``, ``unstoppable_server_errors_total{api,code}``
  and ``unstoppable_server_request_seconds{api}`` (a histogram): per Kafka API;
* ``unstoppable_server_connections``: open client connections;
* ``unstoppable_partition_end_offset{topic,partition}`` and
  ``unstoppable_partition_start_offset``: read from the log at scrape time;
* ``unstoppable_server_produced_bytes_total{topic,partition}`` and
  ``..._fetched_bytes_total``: record batch bytes through this server;
* ``unstoppable_group_lag{group,topic,partition}``: end offset minus committed
  offset, for every group with committed offsets in the log.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

__all__ = ["Metrics"]


class _LogCollector:
    def __init__(self, broker):
        self.broker = broker

    def collect(self):
        b = self.broker
        end = GaugeMetricFamily("unstoppable_partition_end_offset",
                                "Offset the next record appended to the partition gets",
                                labels=["topic", "partition"])
        start = GaugeMetricFamily("unstoppable_partition_start_offset",
                                  "Oldest offset still held by the partition",
                                  labels=["topic", "partition"])
        lag = GaugeMetricFamily("unstoppable_group_lag",
                                "End offset minus the group's committed offset",
                                labels=["group", "topic", "partition"])
        ends = {}
        try:
            names = b.log.topics()
        except Exception:  # noqa: BLE001  (a closed log: nothing to report)
            names = []
        for name in names:
            try:
                t = b.log.topic(name)
                for i in range(t.partitions):
                    p = t.partition(i)
                    e = p.end_offset
                    ends[(name, i)] = e
                    end.add_metric([name, str(i)], e)
                    start.add_metric([name, str(i)], p.start_offset)
            except Exception:  # noqa: BLE001  (deleted while scraping)
                continue
        from unstoppable.server._log import list_groups
        for gid in list_groups(b.log_path):
            try:
                committed = b.coordinator._load(gid)
            except Exception:  # noqa: BLE001
                continue
            for (t, i), (off, _meta) in committed.items():
                if (t, i) in ends:
                    lag.add_metric([gid, t, str(i)], max(ends[(t, i)] - off, 0))
        yield end
        yield start
        yield lag


class Metrics:
    """The server's metrics, in their own registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("unstoppable_server_requests", "Kafka requests answered",
                                ["api"], registry=r)
        self.errors = Counter("unstoppable_server_errors", "Kafka error codes answered",
                              ["api", "code"], registry=r)
        self.latency = Histogram("unstoppable_server_request_seconds",
                                 "Time from a whole request to its response", ["api"],
                                 registry=r, buckets=(.0001, .0005, .001, .0025, .005, .01,
                                                      .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.connections = Gauge("unstoppable_server_connections", "Open client connections",
                                 registry=r)
        self.loop_lag = Histogram("unstoppable_server_loop_lag_seconds",
                                  "How late the event loop runs a 10 ms timer: time during which "
                                  "no request is served (loop stalls, or the process waiting for "
                                  "a CPU)", registry=r,
                                  buckets=(.0001, .0005, .001, .0025, .005, .01, .025, .05, .1,
                                           .25, .5, 1))
        self.produced = Counter("unstoppable_server_produced_bytes", "RecordBatch bytes produced",
                                ["topic", "partition"], registry=r)
        self.fetched = Counter("unstoppable_server_fetched_bytes", "RecordBatch bytes fetched",
                               ["topic", "partition"], registry=r)
        self._http = None
        # Label children by their labels: prometheus-client's labels() costs
        # a few microseconds a call, and these are counted on every request.
        self._per_api: dict = {}
        self._produced: dict = {}
        self._fetched: dict = {}

    def attach(self, broker) -> None:
        """Report the broker's log and groups too."""
        self.registry.register(_LogCollector(broker))

    def request(self, api: str, seconds: float) -> None:
        """Count one request of ``api`` answered after ``seconds``."""
        c = self._per_api.get(api)
        if c is None:
            c = self._per_api[api] = (self.requests.labels(api).inc,
                                      self.latency.labels(api).observe)
        c[0]()
        c[1](seconds)

    def produced_bytes(self, topic: str, partition: int, n: int) -> None:
        """Count ``n`` RecordBatch bytes produced to a partition."""
        _count(self._produced, self.produced, topic, partition, n)

    def fetched_bytes(self, topic: str, partition: int, n: int) -> None:
        """Count ``n`` RecordBatch bytes fetched from a partition."""
        _count(self._fetched, self.fetched, topic, partition, n)

    async def watch_loop(self, interval: float = 0.01) -> None:
        """Observe the event loop's lag until cancelled: a timer due every
        ``interval`` seconds, and how late it fires."""
        import asyncio
        loop = asyncio.get_running_loop()
        observe = self.loop_lag.observe
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            observe(max(0.0, loop.time() - due))

    def error(self, api: str, code: int) -> None:
        self.errors.labels(api, str(code)).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve the text format on http://host:port/metrics (a daemon thread)."""
        self._http = start_http_server(port, addr=host, registry=self.registry)

    def shutdown(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            self._http = None


def _count(incs: dict, counter, topic: str, partition: int, n: int) -> None:
    """Add ``n`` to ``counter``'s child for (topic, partition), keeping each
    child's ``inc`` in ``incs``: prometheus-client's ``labels()`` costs
    3.5-6.4 us a call, the kept ``inc`` 0.8-2.0."""
    inc = incs.get((topic, partition))
    if inc is None:
        inc = incs[(topic, partition)] = counter.labels(topic, str(partition)).inc
    inc(n)
