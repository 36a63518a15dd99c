"""The Prometheus client and the analysis' builtin queries, against a real Prometheus on loopback.

Prometheus (the devcluster's upstream build, else the one on PATH, which `make deps` installs) scrapes a small
exporter in this test that writes TorchServe's counters with the target labels Canaria's ServiceMonitor gives
real pods (set here as static labels). The counters grow by fixed amounts per scrape, so the ratios the
builtins compute are exact: the canary fails 1 request in 10 at 50 ms, the stable version none at 40 ms, and
another model in the namespace with the same version fails every request.

What a healthy Prometheus cannot be made to do (answer 503, time out, answer like a proxy's error page)
is played by a tiny local HTTP server speaking the API's JSON.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from canaria import analysis
from canaria.analysis import Missing, NoData, Outcome, Target, Verdict
from canaria.prometheus import Prometheus, interpret
from tests.support.processes import free_port, start_process_group, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 5
CANARY = Target("models", "cifar10", "cifar10", "canary", "2.0", WINDOW_S)
STABLE = Target("models", "cifar10", "cifar10", "stable", "1.0", WINDOW_S)
TRACK, VERSION = analysis.TRACK_LABEL, analysis.VERSION_LABEL

# Per scrape: (requests, 5xx answers, latency in microseconds); None: the server never answered a 5xx.
PODS = {
    "cifar10-canary-7d9f8c6b4d-x2z4q": ("canary", "2.0", (10, 1, 10 * 50_000)),
    "cifar10-stable-5f6d7c8b9a-abcde": ("stable", "1.0", (10, None, 10 * 40_000)),
    "mnist-canary-6c5b4a3d2e-fghij": ("canary", "2.0", (10, 10, 10 * 9_000_000)),
}


def prometheus_binary() -> str:
    local = ROOT / ".devcluster" / "bin" / "prometheus"
    if local.is_file():
        return str(local)
    found = shutil.which("prometheus")
    if found:
        return found
    pytest.fail("prometheus not found in .devcluster/bin or on PATH: run `make tools` or `make deps`", pytrace=False)


class Exporter(http.server.ThreadingHTTPServer):
    """/metrics/<pod>: TorchServe's counters for that pod, one step further at every scrape."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ExporterHandler)
        self.scrapes: dict[str, int] = dict.fromkeys(PODS, 0)


class ExporterHandler(http.server.BaseHTTPRequestHandler):
    server: Exporter

    def do_GET(self) -> None:
        pod = self.path.removeprefix("/metrics/")
        self.server.scrapes[pod] += 1
        step = self.server.scrapes[pod] + 100  # counters that did not start at zero
        requests, errors, latency = PODS[pod][2]
        lines = [
            "# TYPE ts_inference_requests_total counter",
            f'ts_inference_requests_total{{model_name="m",model_version="default"}} {requests * step}',
            "# TYPE ts_inference_latency_microseconds counter",
            f'ts_inference_latency_microseconds{{model_name="m",model_version="default"}} {latency * step}',
            "# TYPE Requests2XX counter",
            f'Requests2XX{{Level="Host"}} {(requests - (errors or 0)) * step + 1000}',  # + probes: not requests
        ]
        if errors is not None:
            lines += ["# TYPE Requests5XX counter", f'Requests5XX{{Level="Host"}} {errors * step}']
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    exporter = Exporter()
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("prometheus")
    exporter_address = f"127.0.0.1:{exporter.server_address[1]}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": pod,
                "metrics_path": f"/metrics/{pod}",
                "static_configs": [
                    {
                        "targets": [exporter_address],
                        "labels": {"namespace": "models", "pod": pod, TRACK: track, VERSION: version},
                    }
                ],
            }
            for pod, (track, version, _) in PODS.items()
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = start_process_group(
        [
            prometheus_binary(),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        work / "prometheus.log",
        work,
        {},
    )
    client = Prometheus(f"http://127.0.0.1:{port}")
    try:
        # A rate underestimates a series younger than its window: wait until every pod's series fills it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not isinstance(client.query(_enough_scrapes()), float):
            assert process.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        yield client
    finally:
        stop_process_group(process)
        exporter.shutdown()


def _enough_scrapes() -> str:
    return f"count(count_over_time(ts_inference_requests_total[{WINDOW_S}s]) >= {WINDOW_S}) == {len(PODS)}"


def test_builtin_error_rate_of_the_canary_counts_its_own_pods_only(prometheus: Prometheus) -> None:
    assert prometheus.query(analysis.builtin_query("ErrorRate", CANARY)) == pytest.approx(10.0)


def test_builtin_error_rate_is_zero_for_a_track_that_never_answered_5xx(prometheus: Prometheus) -> None:
    assert prometheus.query(analysis.builtin_query("ErrorRate", STABLE)) == 0.0


def test_builtin_mean_latency_is_in_milliseconds(prometheus: Prometheus) -> None:
    assert prometheus.query(analysis.builtin_query("MeanLatency", CANARY)) == pytest.approx(50.0)
    assert prometheus.query(analysis.builtin_query("MeanLatency", STABLE)) == pytest.approx(40.0)


def test_the_request_count_is_inference_requests_not_probes(prometheus: Prometheus) -> None:
    count = prometheus.query(analysis.request_count_query(CANARY))
    assert isinstance(count, float)
    assert 10 * (WINDOW_S - 1) <= count <= 10 * (WINDOW_S + 1)  # 10 per 1 s scrape; probes would add 1000s


def test_measure_then_assess_judges_the_canary_on_live_numbers(prometheus: Prometheus) -> None:
    metrics = [
        {"name": "error-rate", "builtin": "ErrorRate", "max": 1},
        {"name": "latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 20},
        {"name": "loose-latency", "builtin": "MeanLatency", "maxIncreaseOverStablePercent": 30},
        {
            "name": "custom",
            "query": 'sum(rate(ts_inference_requests_total{namespace="{{namespace}}", pod=~"{{name}}-{{track}}-.*"}'
            "[{{interval}}]))",
            "min": 5,
        },
    ]
    measured = analysis.measure(prometheus, metrics, CANARY, STABLE)
    verdict = analysis.assess(measured, {"metrics": metrics, "minRequests": 10, "noData": "Wait"})
    outcomes = {check.name: check.outcome for check in verdict.checks}
    assert outcomes == {
        "error-rate": Outcome.FAIL,
        "latency": Outcome.FAIL,
        "loose-latency": Outcome.PASS,
        "custom": Outcome.PASS,
    }
    assert verdict.verdict is Verdict.FAIL
    latency = verdict.checks[1]
    assert latency.value == pytest.approx(50.0) and latency.stable_value == pytest.approx(40.0)
    assert latency.threshold == "<= 48 (stable 40 + 20%)"


def test_min_requests_above_the_count_makes_the_interval_no_data(prometheus: Prometheus) -> None:
    metrics = [{"name": "error-rate", "builtin": "ErrorRate", "max": 1}]
    measured = analysis.measure(prometheus, metrics, CANARY, STABLE)
    verdict = analysis.assess(measured, {"metrics": metrics, "minRequests": 100_000, "noData": "Wait"})
    assert verdict.verdict is Verdict.WAIT
    assert "fewer than minRequests 100000" in verdict.message


@pytest.mark.parametrize(
    ("promql", "cause", "detail"),
    [
        ("sum(", Missing.REJECTED, "bad_data"),
        ("ts_inference_requests_total", Missing.REJECTED, "gives 3 series"),
        ("up[1m]", Missing.REJECTED, "gives a matrix"),
        ("no_such_metric_total", Missing.NO_SAMPLES, "no series matched"),
        ("0 / 0", Missing.NO_SAMPLES, "NaN"),
    ],
)
def test_queries_without_one_number_say_why(prometheus: Prometheus, promql: str, cause: Missing, detail: str) -> None:
    result = prometheus.query(promql)
    assert isinstance(result, NoData) and result.cause is cause, result
    assert detail in result.detail


def test_a_scalar_and_an_infinite_value_are_numbers(prometheus: Prometheus) -> None:
    assert prometheus.query("1 + 1") == 2.0
    assert prometheus.query("1 / 0") == float("inf")


def test_nothing_listening_is_unreachable() -> None:
    result = Prometheus(f"http://127.0.0.1:{free_port()}", timeout_s=2).query("up")
    assert isinstance(result, NoData) and result.cause is Missing.UNREACHABLE
    assert "did not answer" in result.detail


# -- what a healthy Prometheus does not do: a tiny server speaking the API's JSON ------------------------


class Scripted(http.server.ThreadingHTTPServer):
    def __init__(self, status: int, body: bytes, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.status, self.body, self.delay_s = status, body, delay_s


class ScriptedHandler(http.server.BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:
        time.sleep(self.server.delay_s)
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client of the slow answer has given up
            self.wfile.write(self.server.body)

    def log_message(self, *args: object) -> None:
        pass


def scripted_query(status: int, body: bytes, delay_s: float = 0.0, timeout_s: float = 5.0) -> float | NoData:
    server = Scripted(status, body, delay_s)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return Prometheus(f"http://127.0.0.1:{server.server_address[1]}/", timeout_s=timeout_s).query("up")
    finally:
        server.shutdown()
        server.server_close()


def api_error(error_type: str, error: str) -> bytes:
    return json.dumps({"status": "error", "errorType": error_type, "error": error}).encode()


@pytest.mark.parametrize(
    ("status", "body", "cause", "detail"),
    [
        (503, api_error("timeout", "query timed out in expression evaluation"), Missing.UNREACHABLE, "HTTP 503"),
        (422, api_error("execution", "many-to-many matching not allowed"), Missing.REJECTED, "many-to-many"),
        (502, b"<html><body>Bad Gateway</body></html>", Missing.UNREACHABLE, "not Prometheus' API"),
        (
            200,
            b'{"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}',
            Missing.REJECTED,
            "string",
        ),
    ],
)
def test_answers_that_are_not_a_number(status: int, body: bytes, cause: Missing, detail: str) -> None:
    result = scripted_query(status, body)
    assert isinstance(result, NoData) and result.cause is cause, result
    assert detail in result.detail


def test_a_slow_answer_is_unreachable_after_the_timeout() -> None:
    started = time.monotonic()
    body = b'{"status": "success", "data": {"resultType": "scalar", "result": [1, "1"]}}'
    result = scripted_query(200, body, delay_s=3, timeout_s=0.5)
    assert isinstance(result, NoData) and result.cause is Missing.UNREACHABLE
    assert time.monotonic() - started < 2.5


def test_interpret_reads_a_one_sample_vector() -> None:
    body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}'
    assert interpret(200, body, "http://p") == 0.25
