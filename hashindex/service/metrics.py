"""Prometheus text exposition for the service: request counters, a latency histogram, index figures.

Small on purpose (no client library): counters and histograms keyed by label tuples, rendered in the
text format Prometheus scrapes (https://prometheus.io/docs/instrumenting/exposition_formats/).
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()):
        self.name, self.help, self.buckets, self.labels = name, help_text, buckets, labels
        self.counts: dict[tuple, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[tuple, float] = defaultdict(float)

    def observe(self, value: float, *labels: str, times: int = 1) -> None:
        counts = self.counts[labels]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += times
        counts[-1] += times  # +Inf
        self.sums[labels] += value * times

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            for bound, n in zip(list(self.buckets) + ["+Inf"], counts):
                out.append(f"{self.name}_bucket{_labels(self.labels + ('le',), key + (str(bound),))} {n}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]:.6f}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {counts[-1]}")
        return out


class Metrics:
    """What /metrics reports; updated by the request middleware and the engines."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (method, route, status)
        self.latency = Histogram("hashindex_request_seconds", "Request latency, from receipt to the answer.",
                                 LATENCY_BUCKETS, ("route",))
        self.reloads: dict[str, int] = {"ok": 0, "failed": 0}  # SIGHUP reloads, by result


    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, str(status))] += 1
            self.latency.observe(seconds, route)

    def render(self, engines: dict) -> str:
        with self.lock:
            batches = Histogram("hashindex_search_batch_size", "Searches answered by one Faiss call.",
                                BATCH_BUCKETS, ("index",))
            for name, engine in engines.items():
                for size, times in list(engine.batch_sizes.items()):  # cumulative counts kept by the engine
                    batches.observe(size, name, times=times)
            lines = ["# HELP hashindex_requests_total Requests answered, by route and status.",
                     "# TYPE hashindex_requests_total counter"]
            lines += [f"hashindex_requests_total{_labels(('method', 'route', 'status'), key)} {n}"
                      for key, n in sorted(self.requests.items())]
            errors = sum(n for (_, _, status), n in self.requests.items() if status >= "400")
            lines += ["# HELP hashindex_errors_total Requests answered with a 4xx or 5xx status.",
                      "# TYPE hashindex_errors_total counter", f"hashindex_errors_total {errors}"]
            lines += self.latency.render() + batches.render()
            lines += ["# HELP hashindex_reloads_total Reloads of the served indexes from disk (SIGHUP, --watch, "
                      "the service's own writes), by result.", "# TYPE hashindex_reloads_total counter"]
            lines += [f"hashindex_reloads_total{_labels(('result',), (r,))} {n}" for r, n in self.reloads.items()]
            lines += ["# HELP hashindex_index_items Items in each served index.", "# TYPE hashindex_index_items gauge"]
            lines += [f"hashindex_index_items{_labels(('index',), (name,))} {e.index.count}" for name, e in engines.items()]
            lines += ["# HELP hashindex_index_bits Code length of each served index.", "# TYPE hashindex_index_bits gauge"]
            lines += [f"hashindex_index_bits{_labels(('index',), (name,))} {e.index.bits}" for name, e in engines.items()]
        return "\n".join(lines) + "\n"
