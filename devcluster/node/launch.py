"""Starts one container: `python launch.py <launch.json>`.

In order: join the pod's network and UTS namespaces (held by its pause process), unshare a private mount
namespace (/ made rprivate, so nothing propagates back to the host), bind-mount each source onto its target
(read-only ones remounted ro), remount / read-only there under readOnlyRootFilesystem, chdir, drop to the
container's user if it has one, and exec the command with the container's environment. Any failure
before exec is written to the status pipe (the agent reports it as StartError) and ends this process with
code 128; a successful exec closes the pipe with nothing written.

Run by its file path (standard library only), so a container starts without importing the devcluster package.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
START_ERROR_EXIT_CODE = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _setns(path: str, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, kind), f"setns {path}")
    finally:
        os.close(fd)


def _mount(source: str | None, target: str, flags: int) -> None:
    encoded_source = source.encode() if source is not None else None
    _check(_libc.mount(encoded_source, target.encode(), None, flags, None), f"mount {target}")


# The virtual environment running this launcher, and the checkout its editable install points at.
KEPT_VISIBLE = (sys.prefix, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _hidden_by(paths: tuple[str, ...], targets: list[str]) -> list[str]:
    """The paths that some mount target covers (equal to it or below it)."""
    return [path for path in paths if any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)]


def _bind(fd: int, target: str) -> None:
    """Bind-mounts the opened source onto target. The agent made the mount point, but another node agent on
    this machine (a test's second cluster) may have just removed it as its own leftover: make it again."""
    try:
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)
    except FileNotFoundError:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)


def start(plan: dict[str, Any]) -> None:
    """Everything up to exec; returns only by raising."""
    _setns(plan["netns"], CLONE_NEWNET)
    _setns(plan["utsns"], CLONE_NEWUTS)
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount(None, "/", MS_REC | MS_PRIVATE)
    # Every source is opened before the first mount (a mount over /tmp must not hide a source under /tmp),
    # and after the unshare (a bind mount's source must belong to the caller's mount namespace).
    sources = [os.open(mount["source"], os.O_PATH | os.O_CLOEXEC) for mount in plan["mounts"]]
    # This machine's Python environment stands in for the image's: a volume mounted over where it lives (a
    # checkout under /tmp, say) must not hide it, so it is bound back on top.
    targets = [mount["target"] for mount in plan["mounts"]]
    hidden = _hidden_by(KEPT_VISIBLE, targets)
    for path in hidden:  # its mount point, made in the covering volume's source (the mount may be read-only)
        for mount in plan["mounts"]:
            if _hidden_by((path,), [mount["target"]]) and os.path.isdir(mount["source"]):
                relative = os.path.relpath(path, mount["target"])
                os.makedirs(os.path.join(mount["source"], relative), exist_ok=True)
    kept = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in hidden]
    for fd, mount in zip(sources, plan["mounts"], strict=True):
        _bind(fd, mount["target"])
        if mount["read_only"]:
            _mount(None, mount["target"], MS_REMOUNT | MS_BIND | MS_RDONLY)
        os.close(fd)
    for path, fd in kept:
        _bind(fd, path)
        os.close(fd)
    if plan["read_only_root"]:  # this namespace's / only; last, since a bind mount inherits its source's ro
        _mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chdir(plan["workdir"])
    run_as = plan.get("run_as")
    if run_as:
        os.setgroups(run_as["groups"])
        os.setgid(run_as["gid"])
        os.setuid(run_as["uid"])
    argv = plan["argv"]
    try:
        os.execvpe(argv[0], argv, plan["env"])
    except OSError as err:
        raise OSError(err.errno, f"exec {argv[0]!r}: {err.strerror}") from None


def main(argv: list[str]) -> int:
    with open(argv[1]) as stream:
        plan = json.load(stream)
    status_fd = plan["status_fd"]
    os.set_inheritable(status_fd, False)  # closed by a successful exec: the agent's signal that it started
    try:
        start(plan)
    except OSError as err:
        message = err.strerror if err.filename is None and err.strerror else str(err)
        os.write(status_fd, message.encode())
        print(f"launch: {message}", file=sys.stderr, flush=True)
    return START_ERROR_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main(sys.argv))
