"""What a kubelet decides before it starts a pod, as pure functions: the pod's spec plus the objects it refers
to (ConfigMaps, Secrets, bound PersistentVolumes, service-account tokens) -> the files of each volume and one
process plan per container (argv, env, working dir, mounts, user, probes).

Images are never pulled: `IMAGES` says what this node knows of the images Canaria uses (entrypoint, working
dir, env, the directories a container writes to), and every image runs with this machine's Python
environment and Java (`Machine.path`).
"""

from __future__ import annotations

import base64
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

Object = Mapping[str, Any]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
HOSTS_FILE = "/etc/hosts"
MAX_HOSTNAME = 63  # kubelet truncates a pod's hostname to this
DEFAULT_VOLUME_FILE_MODE = 0o644  # the API's defaultMode for configMap, secret, downwardAPI and projected
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POD_TMP = "/tmp"


@dataclass(frozen=True)
class Image:
    """What this node knows of an image it cannot pull: the defaults its Dockerfile sets."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = "/"
    env: Mapping[str, str] = field(default_factory=dict)
    # Directories of the image's own filesystem that its programs write to: each container gets an empty,
    # private copy (as a container gets its own writable layer).
    writable_dirs: tuple[str, ...] = ()


MODEL_SERVER_HOME = "/home/model-server"
# Matched against the end of the image's repository (registry and tag ignored).
IMAGES: tuple[tuple[str, Image], ...] = (
    (
        "pytorch/torchserve",
        Image(
            workdir=MODEL_SERVER_HOME,
            env={"HOME": MODEL_SERVER_HOME, "PYTHONUNBUFFERED": "1"},
            writable_dirs=(MODEL_SERVER_HOME,),
        ),
    ),
    (
        "canaria-packager",  # images/packager/Dockerfile
        Image(
            entrypoint=("python", "-m", "canaria.package"),
            cmd=("--help",),
            workdir=MODEL_SERVER_HOME,
            env={"HOME": MODEL_SERVER_HOME, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            writable_dirs=(MODEL_SERVER_HOME,),
        ),
    ),
)
OTHER_IMAGE = Image()  # any other image: the pod's command runs with this machine's environment


def image_defaults(image: str) -> Image:
    repository = _repository(image)
    for suffix, defaults in IMAGES:
        if repository == suffix or repository.endswith("/" + suffix):
            return defaults
    return OTHER_IMAGE


def _repository(image: str) -> str:
    """`ghcr.io/org/name:tag@sha256:...` -> `ghcr.io/org/name`."""
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name


@dataclass(frozen=True)
class Machine:
    """How this machine runs every image: its Python environment's bin dir first on PATH, then Java."""

    path: str
    java_home: str | None = None
    # False when another user could not run the interpreter (e.g. it lives under /root): pods then run as
    # root, whatever their runAsUser says.
    honour_run_as: bool = False


@dataclass(frozen=True)
class PodContext:
    """What this node has given the pod: its address, its host and its directory."""

    node_name: str
    pod_ip: str
    host_ip: str
    pod_dir: str  # host path; volumes and per-container files live below it


@dataclass(frozen=True)
class Resolved:
    """The objects the pod refers to, fetched by the agent. A name missing from a mapping was not found."""

    config_maps: Mapping[str, Object] = field(default_factory=dict)
    secrets: Mapping[str, Object] = field(default_factory=dict)
    claims: Mapping[str, str] = field(default_factory=dict)  # claim -> local path of its bound PersistentVolume
    tokens: Mapping[TokenRequest, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenRequest:
    """A projected service-account token the pod asks for."""

    audience: str
    expiration_s: int


@dataclass(frozen=True)
class References:
    config_maps: frozenset[str]
    secrets: frozenset[str]
    claims: frozenset[str]
    tokens: frozenset[TokenRequest]


# --- probes and handlers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exec:
    command: tuple[str, ...]


@dataclass(frozen=True)
class HttpGet:
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TcpSocket:
    host: str
    port: int


@dataclass(frozen=True)
class Sleep:
    seconds: int


Action = Exec | HttpGet | TcpSocket | Sleep


@dataclass(frozen=True)
class Probe:
    action: Action
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Probes:
    startup: Probe | None = None
    liveness: Probe | None = None
    readiness: Probe | None = None


# --- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeFile:
    path: str  # relative to the volume's directory
    data: bytes
    mode: int


@dataclass(frozen=True)
class VolumePlan:
    name: str
    host_dir: str
    owned: bool  # a per-pod directory this node creates and removes (False: a PV's or hostPath's own path)
    files: tuple[VolumeFile, ...] = ()
    read_only: bool = False  # configMap, secret, downwardAPI and projected volumes; read-only claims
    size_limit: str | None = None  # noted, not enforced


@dataclass(frozen=True)
class Mount:
    source: str  # host path
    target: str  # path the container sees
    read_only: bool = False


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerPlan:
    name: str
    image: str
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"
    mounts: tuple[Mount, ...] = ()
    scratch_dirs: tuple[str, ...] = ()  # host dirs emptied before each start (the container's writable layer)
    run_as: RunAs | None = None
    read_only_root: bool = False  # securityContext.readOnlyRootFilesystem: / is remounted read-only
    termination_message_file: str = ""  # host path of the file mounted at terminationMessagePath
    fallback_to_logs: bool = False
    probes: Probes = Probes()
    pre_stop: Action | None = None
    error: str = ""  # set when the container cannot start as specified (kubelet: CreateContainerConfigError)


@dataclass(frozen=True)
class PodPlan:
    volumes: tuple[VolumePlan, ...]
    init_containers: tuple[ContainerPlan, ...]
    containers: tuple[ContainerPlan, ...]
    volume_error: str = ""  # set when a volume cannot be made (kubelet: FailedMount, the pod stays creating)


class PlanError(Exception):
    """A reference the pod makes that this node cannot satisfy."""


def references(pod: Object) -> References:
    """Every ConfigMap, Secret, claim and token the pod needs, so the agent fetches them before planning."""
    spec = pod.get("spec", {})
    config_maps: set[str] = set()
    secrets: set[str] = set()
    claims: set[str] = set()
    tokens: set[TokenRequest] = set()
    for volume in spec.get("volumes") or []:
        if "configMap" in volume:
            config_maps.add(volume["configMap"]["name"])
        if "secret" in volume:
            secrets.add(volume["secret"]["secretName"])
        if "persistentVolumeClaim" in volume:
            claims.add(volume["persistentVolumeClaim"]["claimName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "configMap" in source:
                config_maps.add(source["configMap"]["name"])
            if "secret" in source:
                secrets.add(source["secret"]["name"])
            if "serviceAccountToken" in source:
                tokens.add(_token_request(source["serviceAccountToken"]))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if "configMapRef" in source:
                config_maps.add(source["configMapRef"]["name"])
            if "secretRef" in source:
                secrets.add(source["secretRef"]["name"])
        for var in container.get("env") or []:
            value_from = var.get("valueFrom") or {}
            if "configMapKeyRef" in value_from:
                config_maps.add(value_from["configMapKeyRef"]["name"])
            if "secretKeyRef" in value_from:
                secrets.add(value_from["secretKeyRef"]["name"])
    return References(frozenset(config_maps), frozenset(secrets), frozenset(claims), frozenset(tokens))


def _token_request(source: Object) -> TokenRequest:
    return TokenRequest(audience=source.get("audience") or "", expiration_s=int(source.get("expirationSeconds", 3600)))


def plan_pod(pod: Object, context: PodContext, resolved: Resolved, machine: Machine) -> PodPlan:
    spec = pod.get("spec", {})
    volumes: list[VolumePlan] = []
    volume_error = ""
    for volume in spec.get("volumes") or []:
        try:
            volumes.append(plan_volume(volume, pod, context, resolved))
        except PlanError as err:
            volume_error = volume_error or f"volume {volume['name']!r}: {err}"
    by_name = {volume.name: volume for volume in volumes}

    def plans(key: str) -> tuple[ContainerPlan, ...]:
        return tuple(
            plan_container(container, pod, context, resolved, machine, by_name) for container in spec.get(key) or []
        )

    return PodPlan(tuple(volumes), plans("initContainers"), plans("containers"), volume_error)


# --- volumes ---------------------------------------------------------------------------------------------


def volume_dir(context: PodContext, name: str) -> str:
    return posixpath.join(context.pod_dir, "volumes", name)


def plan_volume(volume: Object, pod: Object, context: PodContext, resolved: Resolved) -> VolumePlan:
    name = volume["name"]
    own_dir = volume_dir(context, name)
    if "emptyDir" in volume:
        return VolumePlan(name, own_dir, owned=True, size_limit=(volume["emptyDir"] or {}).get("sizeLimit"))
    if "configMap" in volume:
        source = volume["configMap"]
        files = _key_files(_config_map_data(resolved, source), source, "configmap", source["name"])
        return VolumePlan(name, own_dir, owned=True, files=files, read_only=True)
    if "secret" in volume:
        source = volume["secret"]
        files = _key_files(_secret_data(resolved, source["secretName"], source), source, "secret", source["secretName"])
        return VolumePlan(name, own_dir, owned=True, files=files, read_only=True)
    if "downwardAPI" in volume:
        files = _downward_files(volume["downwardAPI"], pod, context)
        return VolumePlan(name, own_dir, owned=True, files=files, read_only=True)
    if "projected" in volume:
        files = _projected_files(volume["projected"], pod, context, resolved)
        return VolumePlan(name, own_dir, owned=True, files=files, read_only=True)
    if "persistentVolumeClaim" in volume:
        claim = volume["persistentVolumeClaim"]
        if claim["claimName"] not in resolved.claims:
            raise PlanError(
                f"claim {claim['claimName']!r} is not bound to a PersistentVolume with a hostPath or local path"
            )
        return VolumePlan(name, resolved.claims[claim["claimName"]], owned=False, read_only=bool(claim.get("readOnly")))
    if "hostPath" in volume:
        return VolumePlan(name, volume["hostPath"]["path"], owned=False)
    kind = next((key for key in volume if key != "name"), "unknown")
    raise PlanError(f"{kind} volumes are not supported by this node")


def _config_map_data(resolved: Resolved, source: Object) -> Mapping[str, bytes] | None:
    config_map = resolved.config_maps.get(source["name"])
    if config_map is None:
        if source.get("optional"):
            return None
        raise PlanError(f'configmap "{source["name"]}" not found')
    data = {key: value.encode() for key, value in (config_map.get("data") or {}).items()}
    data.update({key: base64.b64decode(value) for key, value in (config_map.get("binaryData") or {}).items()})
    return data


def _secret_data(resolved: Resolved, name: str, source: Object) -> Mapping[str, bytes] | None:
    secret = resolved.secrets.get(name)
    if secret is None:
        if source.get("optional"):
            return None
        raise PlanError(f'secret "{name}" not found')
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def _key_files(
    data: Mapping[str, bytes] | None, source: Object, kind: str, name: str, default_mode: int | None = None
) -> tuple[VolumeFile, ...]:
    """The files of a configMap or secret source: every key, or only `items` (each with its own path)."""
    if data is None:
        return ()
    mode = default_mode if default_mode is not None else source.get("defaultMode", DEFAULT_VOLUME_FILE_MODE)
    items = source.get("items")
    if not items:
        return tuple(VolumeFile(key, value, mode) for key, value in sorted(data.items()))
    files = []
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise PlanError(f'{kind} "{name}" has no key "{item["key"]}"')
        files.append(VolumeFile(_relative(item["path"]), data[item["key"]], item.get("mode", mode)))
    return tuple(files)


def _downward_files(
    source: Object, pod: Object, context: PodContext, default_mode: int | None = None
) -> tuple[VolumeFile, ...]:
    mode = default_mode if default_mode is not None else source.get("defaultMode", DEFAULT_VOLUME_FILE_MODE)
    files = []
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise PlanError("only fieldRef items of downwardAPI are supported by this node")
        value = field_value(pod, context, item["fieldRef"]["fieldPath"])
        files.append(VolumeFile(_relative(item["path"]), value.encode(), item.get("mode", mode)))
    return tuple(files)


def _projected_files(projected: Object, pod: Object, context: PodContext, resolved: Resolved) -> tuple[VolumeFile, ...]:
    mode = projected.get("defaultMode", DEFAULT_VOLUME_FILE_MODE)
    files: list[VolumeFile] = []
    for source in projected.get("sources") or []:
        if "configMap" in source:
            config_map = source["configMap"]
            data = _config_map_data(resolved, config_map)
            files += _key_files(data, config_map, "configmap", config_map["name"], config_map.get("defaultMode", mode))
        elif "secret" in source:
            secret = source["secret"]
            data = _secret_data(resolved, secret["name"], secret)
            files += _key_files(data, secret, "secret", secret["name"], mode)
        elif "downwardAPI" in source:
            files += _downward_files(source["downwardAPI"], pod, context, mode)
        elif "serviceAccountToken" in source:
            token_source = source["serviceAccountToken"]
            token = resolved.tokens.get(_token_request(token_source))
            if token is None:
                raise PlanError("no service-account token for the pod")
            files.append(VolumeFile(_relative(token_source["path"]), token.encode(), mode))
        else:
            raise PlanError(f"projected source {sorted(source)} is not supported by this node")
    return tuple(files)


def _relative(path: str) -> str:
    """A volume item's path, refusing anything that would land outside the volume."""
    normalized = posixpath.normpath(path)
    if normalized.startswith(("/", "..")):
        raise PlanError(f"path {path!r} leaves the volume")
    return normalized


def field_value(pod: Object, context: PodContext, field_path: str) -> str:
    """A downward-API field: metadata.*, spec.nodeName/serviceAccountName, status.podIP/hostIP."""
    metadata = pod.get("metadata", {})
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": context.node_name,
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", ""),
        "status.podIP": context.pod_ip,
        "status.podIPs": context.pod_ip,
        "status.hostIP": context.host_ip,
        "status.hostIPs": context.host_ip,
    }
    if field_path in simple:
        return str(simple[field_path])
    for kind in ("labels", "annotations"):
        values = metadata.get(kind) or {}
        if field_path == f"metadata.{kind}":
            return "".join(f'{key}="{value}"\n' for key, value in sorted(values.items()))
        match = re.fullmatch(rf"metadata\.{kind}\['(.+)'\]", field_path)
        if match:
            return str(values.get(match.group(1), ""))
    raise PlanError(f"fieldRef {field_path!r} is not supported by this node")


# --- containers ------------------------------------------------------------------------------------------


def pod_hostname(pod: Object) -> str:
    """The pod's hostname, as kubelet sets it: spec.hostname, else the pod's name, at most 63 characters."""
    name = pod.get("spec", {}).get("hostname") or pod.get("metadata", {}).get("name", "pod")
    return str(name)[:MAX_HOSTNAME].rstrip("-.")


def hosts_file(context: PodContext) -> str:
    return posixpath.join(context.pod_dir, "hosts")


def hosts_file_content(pod: Object, context: PodContext) -> str:
    """The /etc/hosts kubelet gives every pod: localhost, and the pod's own name at its address."""
    return (
        "# Kubernetes-managed hosts file (canaria node agent).\n"
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{context.pod_ip}\t{pod_hostname(pod)}\n"
    )


def container_dir(context: PodContext, name: str) -> str:
    return posixpath.join(context.pod_dir, "containers", name)


def plan_container(
    container: Object,
    pod: Object,
    context: PodContext,
    resolved: Resolved,
    machine: Machine,
    volumes: Mapping[str, VolumePlan],
) -> ContainerPlan:
    name, image_name = container["name"], container.get("image", "")
    image = image_defaults(image_name)
    own_dir = container_dir(context, name)
    base = ContainerPlan(
        name=name,
        image=image_name,
        termination_message_file=posixpath.join(own_dir, "termination-log"),
        fallback_to_logs=container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
    )
    try:
        if container.get("restartPolicy") == "Always":
            raise PlanError("restartable init containers (sidecars) are not supported by this node")
        env = container_env(container, pod, context, resolved, machine, image)
        argv = container_argv(container, image, env)
        mounts, scratch = container_mounts(container, context, image, volumes)
        probes = Probes(
            startup=_probe(container, "startupProbe", context),
            liveness=_probe(container, "livenessProbe", context),
            readiness=_probe(container, "readinessProbe", context),
        )
        pre_stop = (container.get("lifecycle") or {}).get("preStop")
        return replace(
            base,
            argv=argv,
            env=env,
            workdir=container.get("workingDir") or image.workdir,
            mounts=mounts,
            scratch_dirs=scratch,
            run_as=run_as(pod, container) if machine.honour_run_as else None,
            read_only_root=read_only_root(container),
            probes=probes,
            pre_stop=handler_action(pre_stop, container, context) if pre_stop else None,
        )
    except PlanError as err:
        return replace(base, error=str(err))


def container_env(
    container: Object, pod: Object, context: PodContext, resolved: Resolved, machine: Machine, image: Image
) -> dict[str, str]:
    """The image's env, then envFrom, then env (later wins), with $(VAR) expanded as a kubelet does."""
    env = {"PATH": machine.path, **({"JAVA_HOME": machine.java_home} if machine.java_home else {})}
    env.update(image.env)
    env["HOSTNAME"] = pod.get("metadata", {}).get("name", "")
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = _config_map_data(resolved, source["configMapRef"]) or {}
        else:
            ref = source["secretRef"]
            data = _secret_data(resolved, ref["name"], ref) or {}
        env.update({prefix + key: value.decode(errors="replace") for key, value in data.items()})
    for var in container.get("env") or []:
        value = _env_value(var, pod, context, resolved)
        if value is not None:
            env[var["name"]] = expand(value, env)
    return env


def _env_value(var: Object, pod: Object, context: PodContext, resolved: Resolved) -> str | None:
    if "valueFrom" not in var:
        return str(var.get("value", ""))
    value_from = var["valueFrom"]
    if "fieldRef" in value_from:
        return field_value(pod, context, value_from["fieldRef"]["fieldPath"])
    if "configMapKeyRef" in value_from:
        ref, kind = value_from["configMapKeyRef"], "configmap"
        data = _config_map_data(resolved, ref)
    elif "secretKeyRef" in value_from:
        ref, kind = value_from["secretKeyRef"], "secret"
        data = _secret_data(resolved, ref["name"], ref)
    else:
        raise PlanError(f"env {var['name']}: {sorted(value_from)} is not supported by this node")
    if data is None:
        return None
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        namespace = pod.get("metadata", {}).get("namespace")
        raise PlanError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return data[ref["key"]].decode(errors="replace")


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` escapes, anything else stays as is."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, value)


def container_argv(container: Object, image: Image, env: Mapping[str, str]) -> tuple[str, ...]:
    """Kubernetes' rules: command replaces the entrypoint (and drops the image's CMD), args replace CMD."""
    command = container.get("command")
    args = container.get("args")
    argv = [*command, *(args or [])] if command else [*image.entrypoint, *(args if args is not None else image.cmd)]
    if not argv:
        raise PlanError(
            f"this node does not know the entrypoint of image {container.get('image')!r}: give the container a command"
        )
    return tuple(expand(arg, env) for arg in argv)


def read_only_root(container: Object) -> bool:
    return bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))


def container_mounts(
    container: Object, context: PodContext, image: Image, volumes: Mapping[str, VolumePlan]
) -> tuple[tuple[Mount, ...], tuple[str, ...]]:
    """The container's bind mounts, parents before children: its private writable dirs and /tmp, its volumes,
    and its termination-message file. Also returns the private dirs (emptied before each start)."""
    own_dir = container_dir(context, container["name"])
    # Part of the image's filesystem: read-only too under readOnlyRootFilesystem.
    read_only = read_only_root(container)
    scratch = [
        Mount(posixpath.join(own_dir, "rootfs", path.strip("/")), path, read_only) for path in image.writable_dirs
    ] + [Mount(posixpath.join(own_dir, "tmp"), POD_TMP, read_only)]
    mounts = list(scratch)
    for volume_mount in container.get("volumeMounts") or []:
        volume = volumes.get(volume_mount["name"])
        if volume is None:
            raise PlanError(f"volume {volume_mount['name']!r} is not defined in the pod")
        source = volume.host_dir
        if volume_mount.get("subPath"):
            source = posixpath.join(source, _relative(volume_mount["subPath"]))
        read_only = bool(volume_mount.get("readOnly")) or volume.read_only
        mounts.append(Mount(source, volume_mount["mountPath"], read_only))
    termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
    mounts.append(Mount(posixpath.join(own_dir, "termination-log"), termination_path))
    mounts.append(Mount(hosts_file(context), HOSTS_FILE))
    return tuple(sorted(mounts, key=lambda mount: _depth(mount.target))), tuple(mount.source for mount in scratch)


def _depth(path: str) -> int:
    return len([part for part in posixpath.normpath(path).split("/") if part])


def mount_point_locations(mounts: Sequence[Mount], workdir: str) -> list[tuple[str, str | None]]:
    """Where each mount's target (and the working dir) must exist before the container starts, as seen from
    the host: a target under an earlier mount lives inside that mount's source. Returns (host path, source
    that decides file or directory; None for a directory)."""
    locations: list[tuple[str, str | None]] = []
    for index, mount in enumerate([*mounts, Mount(source="", target=workdir)]):
        host_path = mount.target
        for earlier in reversed(mounts[:index]):
            relative = posixpath.relpath(mount.target, earlier.target)
            if relative != "." and not relative.startswith(".."):
                host_path = posixpath.join(earlier.source, relative)
                break
        locations.append((host_path, mount.source or None))
    return locations


def run_as(pod: Object, container: Object) -> RunAs | None:
    """The user and groups a container runs as: the container's securityContext over the pod's."""
    pod_context = pod.get("spec", {}).get("securityContext") or {}
    own = container.get("securityContext") or {}
    uid = own.get("runAsUser", pod_context.get("runAsUser"))
    if uid is None:
        return None
    gid = own.get("runAsGroup", pod_context.get("runAsGroup", 0))
    groups = [pod_context["fsGroup"]] if "fsGroup" in pod_context else []
    groups += pod_context.get("supplementalGroups") or []
    return RunAs(int(uid), int(gid), tuple(int(group) for group in groups))


def _probe(container: Object, key: str, context: PodContext) -> Probe | None:
    spec = container.get(key)
    if not spec:
        return None
    return Probe(
        action=handler_action(spec, container, context),
        initial_delay_s=int(spec.get("initialDelaySeconds", 0)),
        period_s=int(spec.get("periodSeconds", 10)),
        timeout_s=int(spec.get("timeoutSeconds", 1)),
        success_threshold=int(spec.get("successThreshold", 1)),
        failure_threshold=int(spec.get("failureThreshold", 3)),
    )


def handler_action(spec: Object, container: Object, context: PodContext) -> Action:
    """A probe's or lifecycle hook's action; HTTP and TCP default to the pod's IP."""
    if "exec" in spec:
        return Exec(tuple(spec["exec"].get("command") or ()))
    if "httpGet" in spec:
        http = spec["httpGet"]
        return HttpGet(
            host=http.get("host") or context.pod_ip,
            port=_port(http["port"], container),
            path=http.get("path") or "/",
            scheme=http.get("scheme", "HTTP"),
            headers=tuple((header["name"], header["value"]) for header in http.get("httpHeaders") or []),
        )
    if "tcpSocket" in spec:
        tcp = spec["tcpSocket"]
        return TcpSocket(host=tcp.get("host") or context.pod_ip, port=_port(tcp["port"], container))
    if "sleep" in spec:
        return Sleep(int(spec["sleep"]["seconds"]))
    raise PlanError(f"{sorted(spec)} handlers are not supported by this node (exec, httpGet, tcpSocket, sleep are)")


def _port(port: int | str, container: Object) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise PlanError(f"port {port!r} is not a named port of container {container['name']!r}")
