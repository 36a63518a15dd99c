"""The operator's log output: readable lines by default, JSON lines with CANARIA_LOG_FORMAT=json.

Every line about a ModelDeployment names it. Kopf's object loggers attach the object's reference to each
record (`k8s_ref`); the operator's own lines about an object attach the same (`about(namespace, name)`), so
the text format prefixes `[namespace/name]` to both and the JSON format gives `namespace` and `name` fields.
Kopf posts Events only for records of its own object logger, so `about` posts nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import kopf

FORMATS = ("text", "json")
REF = "k8s_ref"  # the record attribute Kopf's object loggers use for the object's reference


def about(namespace: str, name: str) -> dict[str, Any]:
    """`extra=` for a log call about one object: `log.warning("...", extra=logs.about(namespace, name))`."""
    return {REF: {"namespace": namespace, "name": name}}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message, and the object's namespace, name
    (and kind, from Kopf) when the line is about one; exception when one is logged."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, REF, None) or {}
        for key in ("namespace", "name", "kind"):
            if ref.get(key):
                entry[key] = ref[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def configure(level: str, format_: str) -> None:
    """Kopf's logging set-up (a handler on the root logger, its level), with the object's `[namespace/name]`
    before each line about an object, or JSON lines."""
    kopf.configure(debug=level == "DEBUG", quiet=level in ("WARNING", "ERROR"), log_prefix=format_ == "text")
    logging.captureWarnings(True)  # Python's warnings too, as log lines (in JSON: not a raw line between objects)
    if format_ == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
