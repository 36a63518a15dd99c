"""Log lines: JSON objects with CANARIA_LOG_FORMAT=json, and every line about an object names it."""

from __future__ import annotations

import io
import json
import logging

import kopf
import pytest
from kopf._core.actions.loggers import ObjectLogger  # what Kopf gives handlers as `logger`

from canaria import handlers, logs


def captured(format_: str, write) -> list[str]:
    """Lines written through the root logger set up as the operator sets it up."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure("INFO", format_)
        stream = io.StringIO()
        (added,) = [handler for handler in root.handlers if handler not in saved[0]]  # Kopf's
        added.setStream(stream)
        write()
        return stream.getvalue().splitlines()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.captureWarnings(False)


def body(namespace: str, name: str) -> kopf.Body:
    return kopf.Body({"apiVersion": "serving.canaria.dev/v1alpha1", "kind": "ModelDeployment",
                      "metadata": {"namespace": namespace, "name": name, "uid": "u"}})  # fmt: skip


def write_lines() -> None:
    log = logging.getLogger("canaria.reconcile")
    log.warning("GET /x: 503; retrying in %gs", 2.0, extra=logs.about("models", "cifar10"))
    ObjectLogger(body=body("team-a", "resnet"), settings=kopf.OperatorSettings()).info("Handler succeeded.")
    logging.getLogger("kopf.activities.startup").info("Activity succeeded.")
    try:
        raise KeyError("boom")
    except KeyError:
        log.exception("the scheduled pass failed", extra=logs.about("models", "cifar10"))


def test_json_lines_carry_the_object_they_are_about():
    lines = [json.loads(line) for line in captured("json", write_lines)]
    retry, kopf_line, startup, failure = lines
    assert retry["message"] == "GET /x: 503; retrying in 2s"
    assert (retry["level"], retry["logger"]) == ("WARNING", "canaria.reconcile")
    assert (retry["namespace"], retry["name"]) == ("models", "cifar10")
    assert retry["time"].endswith("Z") and "T" in retry["time"]
    assert (kopf_line["namespace"], kopf_line["name"], kopf_line["kind"]) == ("team-a", "resnet", "ModelDeployment")
    assert "namespace" not in startup and "name" not in startup
    assert failure["level"] == "ERROR" and "KeyError: 'boom'" in failure["exception"]


def test_text_lines_name_the_object_they_are_about():
    retry, kopf_line, startup, failure, *traceback = captured("text", write_lines)
    assert "[models/cifar10] GET /x: 503; retrying in 2s" in retry and "WARNING" in retry
    assert "[team-a/resnet] Handler succeeded." in kopf_line
    assert startup.endswith("Activity succeeded.")
    assert "[models/cifar10] the scheduled pass failed" in failure and "KeyError: 'boom'" in traceback[-1]


def test_options_read_the_log_format_and_metrics_port():
    defaults = handlers.options_from({})
    assert (defaults.log_format, defaults.metrics_port, defaults.metrics_address) == ("text", 8081, "0.0.0.0")
    options = handlers.options_from({"CANARIA_LOG_FORMAT": "JSON", "CANARIA_METRICS_PORT": "0"})
    assert (options.log_format, options.metrics_port) == ("json", 0)
    with pytest.raises(ValueError, match="CANARIA_LOG_FORMAT"):
        handlers.options_from({"CANARIA_LOG_FORMAT": "yaml"})
