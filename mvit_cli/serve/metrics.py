"""The server's Prometheus metrics, written in the text exposition format (version 0.0.4) without a dependency.

Four families, all a server needs to be watched and tuned: requests by route and status, images by outcome,
the sizes of the model batches the batcher formed (a histogram: how well concurrent requests are batched), and
the latency of classify requests (a histogram). The label values come from small fixed sets (routes known to
the app, HTTP status codes, two outcomes), never from the request: a client cannot grow the output.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    """Cumulative buckets, count and sum, as Prometheus histograms are exposed."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        for bound, count in zip((*map(_number, self.bounds), "+Inf"), self.counts):
            running += count
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_number(self.total)}")
        out.append(f"{name}_count{braces} {running}")
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """What /metrics reports. Thread-safe: requests update it on the event loop, batches on the batcher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (route, status) -> count
        self.images: dict[str, int] = {"classified": 0, "failed": 0}
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.model_loaded = False

    def request(self, route: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(route, status)] = self.requests.get((route, status), 0) + 1
            if seconds is not None:
                self.latency.observe(seconds)

    def image(self, ok: bool) -> None:
        with self._lock:
            self.images["classified" if ok else "failed"] += 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes.observe(size)

    def render(self) -> str:
        """The exposition text, every family with its HELP and TYPE lines."""
        with self._lock:
            lines = [
                "# HELP mvit_requests_total HTTP requests answered, by route and status code.",
                "# TYPE mvit_requests_total counter",
                *(f'mvit_requests_total{{route="{route}",status="{status}"}} {count}'
                  for (route, status), count in sorted(self.requests.items())),
                "# HELP mvit_images_total Images received for classification, by outcome (failed: not decodable).",
                "# TYPE mvit_images_total counter",
                *(f'mvit_images_total{{outcome="{outcome}"}} {count}' for outcome, count in self.images.items()),
                "# HELP mvit_batch_size Images per model batch formed by the dynamic batcher.",
                "# TYPE mvit_batch_size histogram",
                *self.batch_sizes.lines("mvit_batch_size"),
                "# HELP mvit_request_duration_seconds Time to answer a classify request, from its first byte read.",
                "# TYPE mvit_request_duration_seconds histogram",
                *self.latency.lines("mvit_request_duration_seconds"),
                "# HELP mvit_model_loaded 1 once the model is loaded and the server answers classify requests.",
                "# TYPE mvit_model_loaded gauge",
                f"mvit_model_loaded {int(self.model_loaded)}",
            ]
        return "\n".join(lines) + "\n"
