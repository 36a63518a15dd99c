"""The Service traffic client's pure parts: which endpoints are ready, how one is chosen, when a request may be
sent, and the summary's counts and percentiles."""

from __future__ import annotations

import collections
import random
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devcluster.traffic import (
    Endpoint,
    Load,
    Result,
    TrafficError,
    _Tickets,
    choose,
    due_at,
    percentile,
    ready_endpoints,
    service_port_name,
    summarize,
)
from tests.support.stats import chi_square, chi_square_bound

SERVICE = {
    "metadata": {"name": "model"},
    "spec": {"ports": [{"name": "http", "port": 80}, {"name": "metrics", "port": 8082}]},
}


def endpoint_slice(port_name: str, port: int, *endpoints: tuple[str, bool | None, str]) -> dict[str, Any]:
    """An EndpointSlice with one port and endpoints given as (address, ready or None for unset, pod)."""
    items = []
    for address, ready, pod in endpoints:
        item: dict[str, Any] = {"addresses": [address], "targetRef": {"kind": "Pod", "name": pod}}
        if ready is not None:
            item["conditions"] = {"ready": ready}
        items.append(item)
    return {"ports": [{"name": port_name, "port": port}], "endpoints": items}


@pytest.mark.parametrize(("port", "name"), [("http", "http"), (80, "http"), (8082, "metrics"), ("metrics", "metrics")])
def test_a_service_port_is_found_by_name_or_number(port: str | int, name: str) -> None:
    assert service_port_name(SERVICE, port) == name


def test_an_unnamed_single_port_is_the_empty_name() -> None:
    assert service_port_name({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 8080}]}}, 8080) == ""


def test_a_missing_port_names_the_ports_there_are() -> None:
    with pytest.raises(TrafficError, match=r"no port 'grpc' \(ports: http:80, metrics:8082\)"):
        service_port_name(SERVICE, "grpc")


def test_only_ready_endpoints_of_the_named_port_count_each_once() -> None:
    slices = [
        endpoint_slice("http", 8080, ("10.244.1.2", True, "a"), ("10.244.1.3", False, "b"), ("10.244.1.4", None, "c")),
        endpoint_slice("http", 8080, ("10.244.1.2", True, "a"), ("10.244.1.5", True, "d")),  # overlap: once
        endpoint_slice("metrics", 8082, ("10.244.1.9", True, "e")),  # another port of the Service
    ]
    assert ready_endpoints(slices, "http") == (
        Endpoint("10.244.1.2", 8080, "a"),
        Endpoint("10.244.1.4", 8080, "c"),  # no ready condition: unknown reads as ready
        Endpoint("10.244.1.5", 8080, "d"),
    )
    assert [e.pod for e in ready_endpoints(slices, "http")] == ["a", "c", "d"]
    assert ready_endpoints(slices, "metrics") == (Endpoint("10.244.1.9", 8082, "e"),)


def test_a_slice_without_endpoints_or_ports_gives_none() -> None:
    assert ready_endpoints([{"ports": None, "endpoints": None}, {"ports": [{"name": "http", "port": 1}]}], "http") == ()


def test_choosing_from_nothing_gives_nothing() -> None:
    assert choose((), random.Random(1)) is None


def test_choices_are_uniform_over_the_endpoints() -> None:
    endpoints = [Endpoint(f"10.244.1.{i}", 8080) for i in range(2, 7)]
    rng = random.Random(7)
    counts = collections.Counter(choose(endpoints, rng) for _ in range(5000))
    assert set(counts) == set(endpoints)
    assert chi_square([counts[e] for e in endpoints]) < chi_square_bound(len(endpoints) - 1)


def test_a_lopsided_choice_fails_the_uniformity_bound() -> None:
    """The bound used above can fail: 60/10/10/10/10 of 5000 is far outside it."""
    assert chi_square([3000, 500, 500, 500, 500]) > chi_square_bound(4)


def test_requests_are_spaced_by_the_rate() -> None:
    assert due_at(100.0, 0, None) == due_at(100.0, 7, None) == 100.0
    assert [due_at(100.0, i, 4.0) for i in range(3)] == [100.0, 100.25, 100.5]


def test_tickets_stop_at_the_count() -> None:
    tickets = _Tickets(Load(count=3, duration_s=60), time.monotonic())
    dues = [tickets.next_due() for _ in range(5)]
    assert [due is not None for due in dues] == [True, True, True, False, False]


def test_tickets_stop_at_the_time_limit_even_below_the_count() -> None:
    start = time.monotonic()
    tickets = _Tickets(Load(count=1000, duration_s=1, rate_per_s=2), start)
    dues = [due for _ in range(1000) if (due := tickets.next_due()) is not None]
    assert [due - start for due in dues] == [0.0, 0.5]  # the third would start at the limit


def test_a_run_that_has_already_run_out_of_time_hands_out_nothing() -> None:
    tickets = _Tickets(Load(count=10, duration_s=0.5), time.monotonic() - 1)
    assert tickets.next_due() is None


@pytest.mark.parametrize(
    "kwargs", [{"count": 0}, {"duration_s": 0}, {"concurrency": 0}, {"rate_per_s": 0.0}, {"count": -1}]
)
def test_a_load_needs_positive_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Load(**{"count": 1, "duration_s": 1.0, **kwargs})


def test_percentiles_are_measured_values_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([], 50) is None


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1), st.floats(min_value=0.1, max_value=100))
def test_a_percentile_is_one_of_the_values_and_grows_with_q(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert percentile(ordered, q) in ordered
    assert percentile(ordered, q) <= percentile(ordered, min(100.0, q + 10))  # type: ignore[operator]


def result(endpoint: str, status: int | None, latency_ms: float, body: bytes = b"") -> Result:
    return Result(0.0, endpoint, "", status, latency_ms / 1000, body, "" if status else "ConnectionRefusedError")


def test_the_summary_counts_by_status_endpoint_and_answer() -> None:
    results = [
        result("a:1", 200, 10, b"cat"),
        result("a:1", 200, 20, b"cat"),
        result("b:1", 200, 30, b"dog"),
        result("b:1", 503, 40, b"busy"),
        result("b:1", None, 5000),
    ]
    summary = summarize(results, elapsed_s=2.0)
    assert (summary.sent, summary.ok, summary.errors) == (5, 3, 1)
    assert summary.by_status == {"200": 3, "503": 1, "error": 1}
    assert summary.by_endpoint == {"a:1": 2, "b:1": 3}
    assert summary.by_body == {"cat": 2, "dog": 1}  # answers of successful requests only
    assert summary.p50_ms == pytest.approx(20)  # the failed connection's 5 s is not a latency
    assert summary.p99_ms == pytest.approx(40)
    assert summary.rate_per_s == 2.5


def test_an_empty_run_summarizes_to_zeros() -> None:
    summary = summarize([], elapsed_s=0.0)
    assert (summary.sent, summary.ok, summary.p50_ms, summary.rate_per_s) == (0, 0, None, 0.0)
