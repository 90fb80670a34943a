"""The endpoint's own Prometheus metrics, exported through Ray's metrics agent next to Serve's built-in ones
(`ray_serve_num_http_requests`, `ray_serve_http_request_latency_ms`, replica queue lengths, ...).
Scrape the Ray node's metrics port (`ray start --metrics-export-port=8080`; Ray's Prometheus config
under /tmp/ray/session_latest/metrics). Names as scraped (Ray adds the `ray_` prefix):

  ray_raypost_requests_total{route, code}       finished requests by HTTP status (200 or the 4xx/5xx sent)
  ray_raypost_ttft_ms{route}                    time to first token of streamed answers
  ray_raypost_request_latency_ms{route}         whole-request latency
  ray_raypost_output_tokens_total{route}        generated tokens
  ray_raypost_tokens_per_second{route}          decode speed per request (tokens after the first / time)
  ray_raypost_safety_filtered_total{route, action}  answers the output safety filter refused or redacted
  ray_raypost_served_version{version, name}     1 for the registry version this application serves
  ray_raypost_feedback_total{rating}            POST /v1/feedback by sign: positive, neutral, negative
"""
from __future__ import annotations

import time

from ray.serve import metrics

MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
TPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


class ServeMetrics:
    def __init__(self, version: dict | None = None):
        self.requests = metrics.Counter("raypost_requests_total", "finished requests by status code",
                                        tag_keys=("route", "code"))
        self.ttft = metrics.Histogram("raypost_ttft_ms", "time to first token", MS, tag_keys=("route",))
        self.latency = metrics.Histogram("raypost_request_latency_ms", "request latency", MS, tag_keys=("route",))
        self.tokens = metrics.Counter("raypost_output_tokens_total", "generated tokens", tag_keys=("route",))
        self.speed = metrics.Histogram("raypost_tokens_per_second", "decode tokens/s per request", TPS,
                                       tag_keys=("route",))
        self.safety = metrics.Counter("raypost_safety_filtered_total", "answers the safety filter changed",
                                      tag_keys=("route", "action"))
        self.served = metrics.Gauge("raypost_served_version", "the registry version served",
                                    tag_keys=("version", "name"))
        self.version_tags = {"version": str(version["id"]) if version else "none",
                             "name": version["name"] if version else "unregistered"}
        self.served.set(1, tags=self.version_tags)  # set again with every answer: Ray drops a stale gauge
        self.feedback_count = metrics.Counter("raypost_feedback_total", "feedback by sign", tag_keys=("rating",))

    def feedback(self, score: float) -> None:
        sign = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        self.feedback_count.inc(tags={"rating": sign})

    def filtered(self, route: str, action: str) -> None:
        self.safety.inc(tags={"route": route, "action": action})

    def error(self, route: str, code: int) -> None:
        self.requests.inc(tags={"route": route, "code": str(code)})

    def done(self, route: str, start: float, first_token_at: float | None, tokens: int) -> None:
        now, tags = time.monotonic(), {"route": route}
        self.requests.inc(tags={**tags, "code": "200"})
        self.served.set(1, tags=self.version_tags)
        self.latency.observe((now - start) * 1000, tags=tags)
        if tokens > 0:  # Ray's counter refuses inc(0): an answer cut by a stop string at once has no tokens
            self.tokens.inc(tokens, tags=tags)
        if first_token_at is not None:
            self.ttft.observe((first_token_at - start) * 1000, tags=tags)
            if tokens > 1 and now > first_token_at:
                self.speed.observe((tokens - 1) / (now - first_token_at), tags=tags)
