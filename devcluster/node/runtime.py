"""What the node does for a pod's containers: writes volume files, makes mount points, starts a container
through the launcher, stops its process group, runs probes and preStop hooks. Decisions are made elsewhere
(plan, lifecycle, podstatus); this module only acts."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import network
from .plan import (
    POD_TMP,
    Action,
    ContainerPlan,
    Exec,
    HttpGet,
    RunAs,
    Sleep,
    TcpSocket,
    VolumePlan,
    mount_point_locations,
)

LAUNCH_SCRIPT = Path(__file__).with_name("launch.py")
LAUNCH_TIMEOUT_S = 30.0
EMPTY_DIR_MODE = 0o777  # as kubelet makes an emptyDir
PROBE_USER_AGENT = "kube-probe/canaria-node"

log = logging.getLogger("canaria-node")


class MountPoints:
    """Mount points this node had to create outside its state dir (paths the images define, such as
    /etc/canaria or /dev/termination-log): created empty, recorded in a file, removed (if still empty) when
    the agent stops, or by the next agent if this one was killed."""

    def __init__(self, record: Path, state_dir: Path) -> None:
        self.record = record
        self.state_dir = state_dir
        self.lock = threading.Lock()
        self.created: list[str] = json.loads(record.read_text()) if record.exists() else []

    def ensure(self, path: str, directory: bool) -> None:
        with self.lock:
            missing = []
            current = Path(path)
            while not current.exists() and not current.is_symlink():
                missing.append(current)
                current = current.parent
            for index, item in enumerate(reversed(missing)):
                if directory or index < len(missing) - 1:
                    item.mkdir(mode=0o755)
                else:
                    item.touch(mode=0o644)
                if not item.is_relative_to(self.state_dir):
                    self.created.append(str(item))
            if missing:
                self._save()

    def remove_all(self) -> None:
        """Removes what this node created, deepest first: only what is still empty and is no mount point in any
        mount namespace (removing it would detach a mount of a container another agent still runs)."""
        with self.lock:
            in_use = mount_points_in_use()
            for path in sorted(self.created, key=lambda item: item.count("/"), reverse=True):
                if os.path.realpath(path) in in_use:
                    continue
                with contextlib.suppress(OSError):
                    item = Path(path)
                    if item.is_dir() and not item.is_symlink():
                        item.rmdir()  # fails (and stays) when something was put there
                    elif item.is_file() and item.stat().st_size == 0:
                        item.unlink()
            self.created = []
            self._save()

    def _save(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(self.created))


def write_volumes(volumes: Sequence[VolumePlan], fs_group: int | None) -> None:
    for volume in volumes:
        if not volume.owned:
            continue
        directory = Path(volume.host_dir)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755 if volume.read_only else EMPTY_DIR_MODE)
        for file in volume.files:
            target = directory / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.data)
            target.chmod(file.mode)
            if fs_group is not None:
                os.chown(target, -1, fs_group)
        if fs_group is not None:
            os.chown(directory, -1, fs_group)
            directory.chmod(directory.stat().st_mode | 0o2070)  # setgid: new files belong to the group too


def mount_points_in_use() -> set[str]:
    """The mount points of every mount namespace on this machine."""
    namespaces: set[int] = set()
    points: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            namespace = os.stat(f"/proc/{entry}/ns/mnt").st_ino
            if namespace in namespaces:
                continue
            namespaces.add(namespace)
            with open(f"/proc/{entry}/mountinfo") as mountinfo:
                points.update(_unescape(line.split()[4]) for line in mountinfo)
    return points


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), path)


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    error: str  # empty when the command is running; else why it never started (the launcher exits 128)


def start_container(
    plan: ContainerPlan, sandbox: network.Sandbox, log_file: Path, launch_file: Path, mount_points: MountPoints
) -> Started:
    """Prepares the container's private dirs and mount points, then runs the launcher and waits until it has
    exec'd the command (or failed to)."""
    for mount in plan.mounts:
        if mount.source in plan.scratch_dirs:  # a fresh writable layer and /tmp for each run
            shutil.rmtree(mount.source, ignore_errors=True)
            Path(mount.source).mkdir(parents=True)
            if mount.target == POD_TMP:
                Path(mount.source).chmod(0o1777)
            elif plan.run_as is not None:
                os.chown(mount.source, plan.run_as.uid, plan.run_as.gid)
    message_file = Path(plan.termination_message_file)
    message_file.parent.mkdir(parents=True, exist_ok=True)
    message_file.write_bytes(b"")
    message_file.chmod(0o666)  # any user the container runs as may write its termination message
    for mount in plan.mounts:
        if not os.path.lexists(mount.source) and Path(mount.source).is_relative_to(mount_points.state_dir):
            Path(mount.source).mkdir(parents=True)  # a subPath of a volume that does not exist yet
    for host_path, source in mount_point_locations(plan.mounts, plan.workdir):
        mount_points.ensure(host_path, directory=source is None or os.path.isdir(source))
    launch_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    launch_file.write_text(json.dumps(_launch_spec(plan, sandbox, write_end)))
    try:
        with open(log_file, "ab") as log_stream:
            process = subprocess.Popen(
                [sys.executable, str(LAUNCH_SCRIPT), str(launch_file)],
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the container is one process group: stopping it signals them all
                pass_fds=(write_end,),
            )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as status:
        error = status.read().decode(errors="replace")
    return Started(process, error)


def _launch_spec(plan: ContainerPlan, sandbox: network.Sandbox, status_fd: int) -> dict[str, object]:
    return {
        "netns": sandbox.netns,
        "utsns": sandbox.utsns,
        "mounts": [
            {"source": mount.source, "target": mount.target, "read_only": mount.read_only} for mount in plan.mounts
        ],
        "workdir": plan.workdir,
        "read_only_root": plan.read_only_root,
        "run_as": _run_as(plan.run_as),
        "argv": list(plan.argv),
        "env": dict(plan.env),
        "status_fd": status_fd,
    }


def _run_as(run_as: RunAs | None) -> dict[str, object] | None:
    if run_as is None:
        return None
    return {"uid": run_as.uid, "gid": run_as.gid, "groups": list(run_as.groups)}


def stop_container(process: subprocess.Popen[bytes], deadline: Callable[[], float]) -> None:
    """SIGTERM to the container's process group, SIGKILL when the grace period ends. deadline() (a monotonic
    time) is asked again while waiting: an agent that is stopping shortens it."""
    _signal_group(process.pid, signal.SIGTERM)
    while time.monotonic() < deadline():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.1)
            return
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def kill_group_remnants(group: int, net_inode: int) -> None:
    """A container's processes die with its main process (as in a PID namespace): SIGKILL what is left of its
    group, checking each process is still in the pod's namespace so that a recycled group id is never hit."""
    for pid in network.processes_in_namespace(net_inode):
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == group:
                os.kill(pid, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def run_action(
    action: Action,
    timeout_s: float,
    container_pid: int | None,
    env: Mapping[str, str],
    run_as: RunAs | None,
) -> tuple[bool, str]:
    """Runs a probe or a preStop hook once: (succeeded, output or reason)."""
    try:
        if isinstance(action, Exec):
            if container_pid is None:
                return False, "the container is not running"
            return _exec_in_container(action.command, timeout_s, container_pid, env, run_as)
        network.require_cluster_namespace()  # dials to pod addresses happen only from the cluster namespace
        if isinstance(action, HttpGet):
            return _http_get(action, timeout_s)
        if isinstance(action, TcpSocket):
            with socket.create_connection((action.host, action.port), timeout=timeout_s):
                return True, ""
        if isinstance(action, Sleep):
            time.sleep(min(action.seconds, timeout_s))
            return True, ""
    except (OSError, http.client.HTTPException) as err:
        return False, str(err)
    return False, f"unsupported action {action!r}"


def _exec_in_container(
    command: Sequence[str], timeout_s: float, container_pid: int, env: Mapping[str, str], run_as: RunAs | None
) -> tuple[bool, str]:
    """The command in the container's namespaces, working dir and environment, like `kubectl exec`."""
    user = ["--setuid", str(run_as.uid), "--setgid", str(run_as.gid)] if run_as else []
    argv = ["nsenter", f"--target={container_pid}", "--net", "--uts", "--mount", "--wd", *user, "--", *command]
    process = subprocess.Popen(
        argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.communicate()
        return False, f"command timed out after {timeout_s:g}s"
    return process.returncode == 0, output.decode(errors="replace")[-1024:]


def _http_get(action: HttpGet, timeout_s: float) -> tuple[bool, str]:
    connection: http.client.HTTPConnection
    if action.scheme.upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # as kubelet: probes do not verify certificates
        connection = http.client.HTTPSConnection(action.host, action.port, timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(action.host, action.port, timeout=timeout_s)
    try:
        connection.request("GET", action.path, headers={"User-Agent": PROBE_USER_AGENT, **dict(action.headers)})
        response = connection.getresponse()
        response.read(10240)
        return 200 <= response.status < 400, f"HTTP probe failed with statuscode: {response.status}"
    finally:
        connection.close()


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None
