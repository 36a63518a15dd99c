"""The operator's start-up settings: what it takes from its environment and how many passes run at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import kopf
import pytest

from canaria import handlers


def most_at_once(executor: ThreadPoolExecutor, tasks: int, expected: int) -> int:
    """Submit `tasks` blocking calls, the way Kopf runs a synchronous handler, hold them until `expected` run
    (or 10 s pass) and a moment longer; return the peak concurrency."""
    lock, release, running, peak = threading.Lock(), threading.Event(), [0], [0]

    def blocking_pass() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(30)
        with lock:
            running[0] -= 1

    futures = [executor.submit(blocking_pass) for _ in range(tasks)]
    deadline = time.monotonic() + 10
    while running[0] < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # room for a thread beyond the limit to start
    release.set()
    for future in futures:
        future.result(timeout=30)
    return peak[0]


@pytest.mark.parametrize("workers", [3, 40])  # below and above any default thread pool size (at most 32)
def test_canaria_workers_is_the_number_of_passes_that_run_at_once(workers):
    settings = kopf.OperatorSettings()
    handlers.set_concurrency(settings, handlers.options_from({"CANARIA_WORKERS": str(workers)}).workers)
    executor = settings.execution.executor
    assert isinstance(executor, ThreadPoolExecutor)
    try:
        assert most_at_once(executor, workers + 5, workers) == workers
    finally:
        executor.shutdown()


def test_options_default_to_what_the_chart_documents():
    options = handlers.options_from({})
    assert (options.workers, options.log_level) == (20, "INFO")
    assert options.settings == handlers.Settings()
