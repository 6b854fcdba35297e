"""Prometheus text exposition of the server's counters, written by hand (one more dependency saved)."""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets: tuple):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    """Counters shared by the HTTP handlers and the decoding thread, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.cancelled = 0
        self.rejected = 0
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.queue_depth = lambda: 0
        self.running = lambda: 0
        self.cache_reserved = lambda: 0  # set by the scheduler: cache tokens its admitted requests reserved

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def add_tokens(self, prompt: int = 0, generated: int = 0) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.generated_tokens += generated

    def batch(self, rows: int) -> None:
        with self.lock:
            self.batch_rows.observe(rows)

    def count(self, what: str) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)

    def render(self) -> str:
        with self.lock:
            lines = ["# HELP hftool_requests_total HTTP requests by endpoint and status code.",
                     "# TYPE hftool_requests_total counter"]
            lines += [f'hftool_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP hftool_request_latency_seconds Time from request to last byte, by endpoint.",
                      "# TYPE hftool_request_latency_seconds histogram"]
            for endpoint, histogram in sorted(self.latency.items()):
                lines += histogram.lines("hftool_request_latency_seconds", f'endpoint="{endpoint}"')
            lines += ["# HELP hftool_prompt_tokens_total Prompt tokens decoded.",
                      "# TYPE hftool_prompt_tokens_total counter", f"hftool_prompt_tokens_total {self.prompt_tokens}",
                      "# HELP hftool_generated_tokens_total Tokens generated.",
                      "# TYPE hftool_generated_tokens_total counter",
                      f"hftool_generated_tokens_total {self.generated_tokens}",
                      "# HELP hftool_cancelled_total Generations stopped because their client went away.",
                      "# TYPE hftool_cancelled_total counter", f"hftool_cancelled_total {self.cancelled}",
                      "# HELP hftool_rejected_total Requests refused with 503 because the queue was full.",
                      "# TYPE hftool_rejected_total counter", f"hftool_rejected_total {self.rejected}",
                      "# HELP hftool_queue_depth Requests waiting for the next batch.",
                      "# TYPE hftool_queue_depth gauge", f"hftool_queue_depth {self.queue_depth()}",
                      "# HELP hftool_running_requests Requests admitted to the running batch (prefilling or decoding).",
                      "# TYPE hftool_running_requests gauge", f"hftool_running_requests {self.running()}",
                      "# HELP hftool_cache_tokens_reserved Cache tokens the admitted requests reserved "
                      "(prompt + max_tokens per sequence; at most --max-cache-tokens).",
                      "# TYPE hftool_cache_tokens_reserved gauge",
                      f"hftool_cache_tokens_reserved {self.cache_reserved()}",
                      "# HELP hftool_batch_rows Sequences decoded together per decoding step.",
                      "# TYPE hftool_batch_rows histogram"]
            lines += self.batch_rows.lines("hftool_batch_rows")
        return "\n".join(lines) + "\n"
