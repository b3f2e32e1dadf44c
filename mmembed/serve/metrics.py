"""Server metrics in Prometheus' text format (``GET /metrics``): requests by status, inputs, queue depth, requests
being read, batch sizes and latencies. Written by hand (counters, a gauge, fixed-bucket histograms): no client library needed."""

from __future__ import annotations

import threading
from collections import Counter

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Cumulative-bucket histogram with a sum and a count, as Prometheus reads it."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{self.name}_bucket{{le="+Inf"}} {self.count}', f"{self.name}_sum {self.sum:.6f}",
                f"{self.name}_count {self.count}"]
        return out


class Metrics:
    """The server's counters; updated from the event loop and the encode thread (under a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: Counter[int] = Counter()
        self.inputs = 0
        self.queue_depth = 0
        self.arriving = 0
        self.batch_inputs = Histogram("mmembed_batch_inputs", "Inputs per encode batch.", SIZE_BUCKETS)
        self.batch_requests = Histogram("mmembed_batch_requests", "Requests merged into one encode batch.",
                                        SIZE_BUCKETS)
        self.encode_seconds = Histogram("mmembed_encode_seconds", "Seconds per encode batch.", SECOND_BUCKETS)
        self.request_seconds = Histogram("mmembed_request_seconds",
                                         "Seconds from receiving an embeddings request to its answer.", SECOND_BUCKETS)

    def response(self, status: int, seconds: float | None = None, inputs: int = 0) -> None:
        with self._lock:
            self.responses[status] += 1
            self.inputs += inputs
            if seconds is not None:
                self.request_seconds.observe(seconds)

    def batch(self, inputs: int, requests: int, seconds: float) -> None:
        with self._lock:
            self.batch_inputs.observe(inputs)
            self.batch_requests.observe(requests)
            self.encode_seconds.observe(seconds)

    def render(self) -> str:
        """All metrics in Prometheus' text exposition format."""
        with self._lock:
            lines = ["# HELP mmembed_requests_total Embeddings requests answered, by HTTP status.",
                     "# TYPE mmembed_requests_total counter"]
            lines += [f'mmembed_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.responses.items())]
            lines += ["# HELP mmembed_inputs_total Inputs embedded.", "# TYPE mmembed_inputs_total counter",
                      f"mmembed_inputs_total {self.inputs}",
                      "# HELP mmembed_queue_depth Requests waiting for a batch.", "# TYPE mmembed_queue_depth gauge",
                      f"mmembed_queue_depth {self.queue_depth}",
                      "# HELP mmembed_requests_arriving Requests being read or parsed (not yet queued).",
                      "# TYPE mmembed_requests_arriving gauge", f"mmembed_requests_arriving {self.arriving}"]
            for histogram in (self.batch_inputs, self.batch_requests, self.encode_seconds, self.request_seconds):
                lines += histogram.lines()
        return "\n".join(lines) + "\n"
