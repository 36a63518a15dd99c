"""Start a server as its own process group and make sure the whole group is gone afterwards.

TorchServe's CLI starts a Java frontend, which starts Python workers: killing only the first process would
leave the others running. Each server therefore runs in a new session, and stopping it signals the group;
an atexit hook stops whatever a crashed test left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_running: set[subprocess.Popen[bytes]] = set()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_process_group(command: list[str], log_file: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    _running.add(process)
    return process


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """Stop the group's members, then its leader, then SIGKILL what is left; return when none remains.

    Members go first so that the leader (TorchServe's CLI, waiting on Java) lives to reap them: killing
    the whole group at once leaves a defunct Java process for init to collect.
    """
    _running.discard(process)
    group = process.pid  # the leader of a new session: its pid is the group id
    for pid in _members(group, except_pid=group):
        _signal(pid, signal.SIGTERM)
    _wait_until(lambda: not _members(group, except_pid=group), grace_seconds)
    _signal(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds / 2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    _wait_until(lambda: not _members(group), 5)


def group_members(group: int) -> list[int]:
    """Live (non-zombie) processes of the group, for tests that check nothing was left behind."""
    return _members(group)


def _wait_until(done: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        time.sleep(0.1)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def _members(group: int, except_pid: int | None = None) -> list[int]:
    return [pid for pid in _pids() if pid != except_pid and _in_group(pid, group)]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _in_group(pid: int, group: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    state, pgrp = fields[0], int(fields[2])
    return pgrp == group and state != "Z"


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_running):
        stop_process_group(process, grace_seconds=2)
