"""Starting and stopping the control plane's processes, and the loopback ports they listen on.

A started process is recorded as `run/<name>.pid` plus `run/<name>.cmdline` (its argv, NUL-separated). A
process is only ever signalled when the live pid's /proc cmdline still matches, so a recycled pid is never
killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunFiles:
    """The pid and command-line records of one component under the state's run/ directory."""

    run_dir: Path
    name: str

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def cmdline_file(self) -> Path:
        return self.run_dir / f"{self.name}.cmdline"


def free_port() -> int:
    """A currently free TCP port on the loopback address, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
        return False


def start(
    argv: list[str],
    log_file: Path,
    run: RunFiles,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """Starts argv detached from our session (it outlives the CLI), logging to log_file, and records it.
    preexec runs in the child before exec (the pod network's components enter its namespace there)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=preexec,
        )
    run.pid_file.write_text(f"{process.pid}\n")
    run.cmdline_file.write_bytes(b"\0".join(arg.encode() for arg in argv))
    return process


def recorded_pid(run: RunFiles) -> int | None:
    """The pid recorded for this component if that pid still runs the recorded command line."""
    try:
        pid = int(run.pid_file.read_text().strip())
        expected = run.cmdline_file.read_bytes()
    except (OSError, ValueError):
        return None
    return pid if _runs_cmdline(pid, expected) else None


def stop(runs: list[RunFiles], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every recorded, verified process; SIGKILL the ones still alive after timeout_s."""
    pids = {run.name: pid for run in runs if (pid := recorded_pid(run)) is not None}
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    _wait_gone(list(pids.values()), deadline=time.monotonic() + timeout_s)
    killed = [pid for run in runs if (pid := pids.get(run.name)) and _alive(pid) and recorded_pid(run) == pid]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    _wait_gone(killed, deadline=time.monotonic() + 5.0)
    for run in runs:
        run.pid_file.unlink(missing_ok=True)
        run.cmdline_file.unlink(missing_ok=True)


def _wait_gone(pids: list[int], deadline: float) -> None:
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _runs_cmdline(pid: int, expected: bytes) -> bool:
    try:
        actual = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return actual.rstrip(b"\0") == expected and _alive(pid)


def _alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (an exited child nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state == "Z":
        _reap_if_child(pid)
        return False
    return True


def _reap_if_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
