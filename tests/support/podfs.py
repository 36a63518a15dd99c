"""Run a container of a rendered pod on this machine with that pod's filesystem, to see what it writes.

The container's root is this machine's root, read-only (an overlay with no writable layer), as with
`readOnlyRootFilesystem: true`; each of the pod's volumes is a local directory bound at the container's
mountPath, read-only where the mount says so; /dev holds only the usual device nodes and the container's
termination log, which is a local file the test reads afterwards. Everything happens in a private mount
namespace (`unshare --mount`), then `chroot`: nothing outside that namespace changes, and the mounts vanish
with its last process. Needs root (mount namespaces); runs as root inside, so the read-only mounts, not file
permissions, are what the test checks.

    pod = PodFilesystem(tmp_path / "pod", volumes={"model-store": store, "tmp": tmp, ...})
    command = pod.command(container, env={"PATH": ...}, workdir="/home/model-server")
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# What the containers run with here: the virtual environment and the checkout its editable install points at.
KEPT_VISIBLE = (sys.prefix, str(Path(__file__).resolve().parents[2]))


def hidden_by(paths: Sequence[str], mount_paths: Sequence[str]) -> list[str]:
    """The paths that some mount path covers (equal to it or below it)."""
    return [path for path in paths if any(path == m or path.startswith(m.rstrip("/") + "/") for m in mount_paths)]


@dataclass(frozen=True)
class PodFilesystem:
    base: Path  # scratch space for the overlay's mount points (a test's tmp_path)
    volumes: dict[str, Path]  # volume name -> the local directory that plays it

    def termination_log(self, container: dict[str, Any]) -> Path:
        return self.base / f"{container['name']}.termination-log"

    def command(self, container: dict[str, Any], env: dict[str, str], workdir: str) -> list[str]:
        """argv that runs `container`'s command and args in the pod's filesystem, with `env` only."""
        root, layer = self.base / f"{container['name']}-root", self.base / f"{container['name']}-layer"
        for directory in (root, layer):
            directory.mkdir(parents=True, exist_ok=True)
        termination_log = self.termination_log(container)
        termination_log.write_text("")
        mounts = container.get("volumeMounts") or []
        steps = [
            "set -e",
            # The overlay's top layer holds the mount points the pod's volumes need (/etc/canaria, ...).
            f"mount -t tmpfs -o size=16m,mode=755 canaria-pod-layer {q(layer)}",
            *(f"mkdir -p {q(layer)}{q(mount['mountPath'])}" for mount in mounts),
            f"mkdir -p {q(layer)}{q(workdir)}",
            f"mount -t overlay canaria-pod-root -o lowerdir={q(layer)}:/ {q(root)}",  # no upperdir: read-only
            f"mount -t proc proc {q(root)}/proc",
            f"mount --rbind /sys {q(root)}/sys",
            f"mount -t tmpfs -o size=1m,mode=755 canaria-pod-dev {q(root)}/dev",
            *(f"touch {q(root)}/dev/{name} && mount --bind /dev/{name} {q(root)}/dev/{name}" for name in DEVICES),
            f"mkdir {q(root)}/dev/shm && mount -t tmpfs -o size=256m canaria-pod-shm {q(root)}/dev/shm",
            f"ln -s /proc/self/fd {q(root)}/dev/fd",
            f"touch {q(root)}/dev/termination-log",
            f"mount --bind {q(termination_log)} {q(root)}/dev/termination-log",
        ]
        for mount in mounts:
            target = f"{q(root)}{q(mount['mountPath'])}"
            steps.append(f"mount --bind {q(self.volumes[mount['name']])} {target}")
            if mount.get("readOnly"):
                steps.append(f"mount -o remount,bind,ro {target}")
        # This machine's Python environment stands in for the image's: a volume mounted over where it lives
        # (a checkout under /tmp, say) must not hide it.
        for kept in hidden_by(KEPT_VISIBLE, [mount["mountPath"] for mount in mounts]):
            steps.append(f"mkdir -p {q(root)}{q(kept)} && mount --rbind {q(kept)} {q(root)}{q(kept)}")
        environment = [f"{key}={value}" for key, value in env.items()]
        inner = f'cd {q(workdir)} && exec "$@"'
        argv = [*container["command"], *container.get("args", [])]
        steps.append(
            f"exec chroot {q(root)} /usr/bin/env -i {' '.join(map(q, environment))} sh -c {q(inner)} sh "
            + " ".join(map(q, argv))
        )
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps)]


def in_container_of(pid: int, argv: list[str], env: dict[str, str]) -> list[str]:
    """argv that runs in the filesystem of the process `pid` started, as `kubectl exec` (or an exec probe)
    runs in a container's."""
    environment = [f"{key}={value}" for key, value in env.items()]
    return ["nsenter", f"--target={pid}", "--mount", "--root", "--wd", "/usr/bin/env", "-i", *environment, *argv]


def q(value: object) -> str:
    return shlex.quote(str(value))
