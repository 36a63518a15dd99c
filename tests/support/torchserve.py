"""A real TorchServe on free loopback ports, configured the way the operator configures the serving pod.

    with running_torchserve(model_store, ModelSettings("cifar10", "1"), workdir) as server:
        server.wait_until_ready("cifar10")
        server.predict("cifar10", png_bytes)

Workarounds for TorchServe 0.12 (model_handlers/README.md lists them all):
- the `torchserve` CLI keeps one pid file in the temp dir and refuses to start while it names a live
  server, so each instance gets its own TMPDIR/TEMP (which also holds the unpacked archives);
- logs go to ./logs unless LOG_LOCATION / METRICS_LOCATION say otherwise: both point into the workdir.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from canaria import render, spec

from .processes import free_port, start_process_group, stop_process_group

TORCHSERVE = Path(sys.executable).with_name("torchserve")


@dataclass(frozen=True)
class ModelSettings:
    """The per-model settings the operator renders into config.properties' `models=`."""

    name: str
    version: str
    batch_size: int = 1
    max_batch_delay_ms: int = 50
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 120


@dataclass(frozen=True)
class Ports:
    inference: int = field(default_factory=free_port)
    management: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)


def render_config_properties(model_store: Path, model: ModelSettings, ports: Ports) -> str:
    """The operator's own config.properties (canaria.render), moved to loopback, free ports and a temp store."""
    md = spec.defaulted(
        {
            "metadata": {"name": model.name},
            "spec": {
                "model": {"version": model.version, "storageUri": "https://unused.example/m.tar.gz"},
                "serving": {
                    "workers": {"min": model.min_workers, "max": model.max_workers},
                    "batching": {"maxBatchSize": model.batch_size, "maxBatchDelayMs": model.max_batch_delay_ms},
                    "responseTimeoutSeconds": model.response_timeout_s,
                },
            },
        }
    )
    return on_loopback(render.config_properties(md, md["spec"]["model"]), ports, model_store)


def with_model_api(config_properties: str) -> str:
    """A test's own config: TorchServe's model API on, so that `register` can load more archives of the model
    store (`allowed_urls` still refuses any other source). The operator's config turns it off."""
    return config_properties.replace("enable_model_api=false\n", "enable_model_api=true\n")


def on_loopback(config_properties: str, ports: Ports, model_store: Path) -> str:
    """A pod's config.properties moved to this machine: loopback addresses, free ports, a local store."""
    local = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "model_store": str(model_store),
    }
    lines = []
    for line in config_properties.splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={local[key]}" if key in local else line)
    # TorchServe's gRPC API always listens, on 7070/7071 by default: two servers on one machine would collide.
    lines += [f"grpc_inference_port={free_port()}", f"grpc_management_port={free_port()}"]
    return "\n".join(lines) + "\n"


def encoded_image(pixels: np.ndarray, image_format: str = "PNG") -> bytes:
    """uint8 HxWx3 pixels as the bytes of an image file: the body a client posts to /predictions."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


@dataclass
class TorchServe:
    ports: Ports
    workdir: Path
    model_store: Path
    process_group: int = 0  # the CLI's pid: Java and the Python workers run in its process group

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    def describe(self, name: str) -> list[dict[str, Any]] | None:
        response = requests.get(f"{self.management_url}/models/{name}", timeout=5)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        described: list[dict[str, Any]] = response.json()
        return described

    def wait_until_ready(self, name: str, timeout_s: float = 180) -> None:
        """Until a worker of the model reports READY: `/ping` says Healthy long before that."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                described = self.describe(name)
            except requests.ConnectionError:
                described = None
            workers = (described or [{}])[0].get("workers", [])
            if any(worker.get("status") == "READY" for worker in workers):
                return
            time.sleep(0.5)
        raise TimeoutError(f"model {name} has no READY worker after {timeout_s}s\n{self.log_tail()}")

    def register(self, archive: str, *, batch_size: int = 1, max_batch_delay_ms: int = 50) -> None:
        """Load another archive of the model store, synchronously, with one worker."""
        params: dict[str, str | int] = {
            "url": archive,
            "batch_size": batch_size,
            "max_batch_delay": max_batch_delay_ms,
            "initial_workers": 1,
            "synchronous": "true",
        }
        response = requests.post(f"{self.management_url}/models", params=params, timeout=300)
        if response.status_code != 200:
            raise RuntimeError(f"registering {archive}: {response.status_code} {response.text}\n{self.log_tail()}")

    def predict(
        self, name: str, body: bytes | str, content_type: str = "application/octet-stream"
    ) -> requests.Response:
        data = body.encode() if isinstance(body, str) else body
        return requests.post(
            f"{self.inference_url}/predictions/{name}", data=data, headers={"Content-Type": content_type}, timeout=60
        )

    def metrics(self) -> str:
        response = requests.get(f"{self.metrics_url}/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def log_tail(self, lines: int = 60) -> str:
        chunks = []
        for log in (self.workdir / "stdout.log", self.workdir / "logs" / "model_log.log"):
            if log.exists():
                chunks.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)


@contextmanager
def running_torchserve(
    model_store: Path,
    model: ModelSettings,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    model_api: bool = False,
) -> Iterator[TorchServe]:
    """Start TorchServe with the operator-style config for `model` (with the model API on for `register`
    if asked); stop it and all its workers after."""
    ports = Ports()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.properties"
    rendered = render_config_properties(model_store, model, ports)
    config.write_text(with_model_api(rendered) if model_api else rendered)
    server = TorchServe(ports=ports, workdir=workdir, model_store=model_store)
    yield from _serve(server, config, extra_env or {})


@contextmanager
def start_with_config(config: Path, model_store: Path, ports: Ports, workdir: Path) -> Iterator[TorchServe]:
    """Like running_torchserve, but with a config.properties written elsewhere (e.g. by the packager)."""
    yield from _serve(TorchServe(ports=ports, workdir=workdir, model_store=model_store), config, {})


def _serve(server: TorchServe, config: Path, extra_env: dict[str, str]) -> Iterator[TorchServe]:
    tmp = server.workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(server.workdir / "logs"),
        "METRICS_LOCATION": str(server.workdir / "logs"),
        **extra_env,
    }
    command = [str(TORCHSERVE), "--start", "--foreground", "--ncs", "--ts-config", str(config)]
    command += ["--model-store", str(server.model_store)]
    process = start_process_group(command, server.workdir / "stdout.log", cwd=server.workdir, env=env)
    server.process_group = process.pid
    try:
        _wait_for_port(server, process.poll)
        yield server
    finally:
        stop_process_group(process)


def _wait_for_port(server: TorchServe, exited: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited() is not None:
            raise RuntimeError(f"TorchServe exited during startup\n{server.log_tail()}")
        try:
            requests.get(f"{server.inference_url}/ping", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.3)
    raise TimeoutError(f"TorchServe did not listen within {timeout_s}s\n{server.log_tail()}")
