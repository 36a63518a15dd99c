"""The TorchServe test support stops everything it starts: the CLI, Java and every Python worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.processes import group_members
from tests.support.torchserve import running_torchserve

from .conftest import CIFAR10, cifar10_args, run_packager

pytestmark = pytest.mark.torchserve


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""  # exited meanwhile


def test_stopping_torchserve_leaves_no_java_or_worker_behind(cifar10_source: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_packager(*cifar10_args(cifar10_source, store))
    with running_torchserve(store, CIFAR10, tmp_path / "ts") as server:
        server.wait_until_ready(CIFAR10.name)
        group = server.process_group
        running = " | ".join(command_line(pid) for pid in group_members(group))
        assert "org.pytorch.serve.ModelServer" in running
        assert "model_service_worker" in running
    assert group_members(group) == []
