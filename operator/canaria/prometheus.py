"""The one layer that talks to Prometheus: instant queries over its HTTP API (`GET /api/v1/query`).

Every way a query can come back without a number maps here to a `canaria.analysis.NoData` cause:
- no answer (refused, reset, timed out), an HTTP error other than 400/422, or a body that is not the API's
  JSON (a proxy's error page): UNREACHABLE. It says nothing about the canary, and the analysis holds.
- 400 (bad_data: the PromQL does not parse) and 422 (execution: e.g. duplicate series in a binary
  operation), or an answer that is not one number (several series, a range vector, a string): REJECTED.
- an empty vector, or NaN: NO_SAMPLES.
"""

from __future__ import annotations

import json
import math
from typing import Any

import urllib3

from canaria.analysis import Missing, NoData

DEFAULT_TIMEOUT_SECONDS = 5.0
SERIES_SHOWN = 3  # labels of the first few series in the message of a query that gave several


class Prometheus:
    """A `canaria.analysis.Provider` over Prometheus' HTTP API at `url` (e.g. http://prometheus:9090)."""

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._pool = urllib3.PoolManager(retries=False)

    def query(self, promql: str) -> float | NoData:
        try:
            response = self._pool.request(
                "GET",
                f"{self.url}/api/v1/query",
                # Prometheus stops evaluating at its own timeout, so a slow query costs it no more than us.
                fields={"query": promql, "timeout": f"{self.timeout_s:g}s"},
                timeout=urllib3.Timeout(total=self.timeout_s),
            )
        except urllib3.exceptions.HTTPError as error:
            return NoData(Missing.UNREACHABLE, f"Prometheus at {self.url} did not answer: {error}")
        return interpret(response.status, response.data, self.url)


def interpret(status: int, body: bytes, url: str) -> float | NoData:
    """The number (or the reason there is none) in one answer of /api/v1/query."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "status" not in answer:
        excerpt = body[:200].decode(errors="replace").strip()
        return NoData(Missing.UNREACHABLE, f"{url} answered HTTP {status} that is not Prometheus' API: {excerpt!r}")
    if answer["status"] != "success":
        detail = f"{answer.get('errorType', 'error')}: {answer.get('error', '')}"
        if status in (400, 422):
            return NoData(Missing.REJECTED, f"Prometheus rejected the query: {detail}")
        return NoData(Missing.UNREACHABLE, f"Prometheus at {url} failed (HTTP {status}): {detail}")
    data = answer.get("data") or {}
    kind, result = data.get("resultType"), data.get("result") or []
    if kind == "scalar":
        return _sample(result[1])
    if kind != "vector":
        return NoData(Missing.REJECTED, f"the query gives a {kind}, not a number: use an instant vector or scalar")
    if not result:
        return NoData(Missing.NO_SAMPLES, "no series matched")
    if len(result) > 1:
        shown = ", ".join(json.dumps(series.get("metric", {}), sort_keys=True) for series in result[:SERIES_SHOWN])
        more = ", ..." if len(result) > SERIES_SHOWN else ""
        return NoData(
            Missing.REJECTED, f"the query gives {len(result)} series ({shown}{more}): aggregate them to one, e.g. sum()"
        )
    return _sample(result[0]["value"][1])


def _sample(text: str) -> float | NoData:
    value = float(text)  # Prometheus writes "NaN", "+Inf", "-Inf" as float() reads them
    if math.isnan(value):
        return NoData(Missing.NO_SAMPLES, "the query gave NaN (0/0: no requests in the interval)")
    return value
