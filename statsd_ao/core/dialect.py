"""What is particular to one HTTP API in the delivery machinery: a `Dialect` (pure).

`statsd_ao.io.sink.HttpSink` (the outbox, the gate, the spool, the posts) and
`statsd_ao.io.settling.Settler` (the fate of every post) are the same for every API that takes
batches of data points over HTTP.  What differs is small, and lives in a dialect: where to
post, with which headers, how an answer reads (`Verdict`), and how a body is cut in two when
the API refused it whole.  `AppOptics` is the dialect of ``POST /v1/measurements``;
`statsd_ao.otlp.dialect.Otlp` is the one of OTLP/HTTP.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Protocol

import orjson

from statsd_ao.core.batching import encode
from statsd_ao.core.retry import Answer, Verdict, classify


class Dialect(Protocol):
    """One API's particulars, for `HttpSink` and `Settler`."""

    # Who answers, for log lines ("AppOptics", "the OTLP endpoint").
    name: str
    # Where to look when the API denies the token, for the log line.
    token_hint: str
    # The URL every post of data points goes to.
    url: str

    @property
    def headers(self) -> Mapping[str, str]:
        """Headers of every post (authorization, content type)."""
        ...

    def body_headers(self, body: bytes) -> Mapping[str, str] | None:
        """Headers of one post that depend on its body (a Content-Encoding), or None."""
        ...

    def classify(self, answer: Answer, count: int, wall: float) -> Verdict:
        """Read one answer to a post of ``count`` data points; never raises."""
        ...

    def halves(self, body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
        """Cut a post of at least two data points in two: (body, data points) of each."""
        ...


def basic_auth(token: str) -> str:
    """The Authorization header: the token is the user name, the password is empty."""
    return "Basic " + base64.b64encode(f"{token}:".encode()).decode("ascii")


class AppOptics:
    """``POST <api_url>/v1/measurements`` with a JSON body, HTTP Basic auth."""

    name = "AppOptics"
    token_hint = "APPOPTICS_TOKEN or --token"

    def __init__(self, api_url: str, token: str) -> None:
        self.url = api_url.rstrip("/") + "/v1/measurements"
        self._headers = {"Authorization": basic_auth(token), "Content-Type": "application/json"}

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    def body_headers(self, body: bytes) -> Mapping[str, str] | None:
        return None

    def classify(self, answer: Answer, count: int, wall: float) -> Verdict:
        return classify(answer, count, wall)

    def halves(self, body: bytes) -> tuple[tuple[bytes, int], tuple[bytes, int]]:
        measurements = orjson.loads(body)["measurements"]
        middle = len(measurements) // 2
        first, second = measurements[:middle], measurements[middle:]
        return (encode(first), len(first)), (encode(second), len(second))
