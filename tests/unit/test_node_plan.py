"""The node agent's pure plan: a pod spec plus the objects it refers to -> volume files and one process plan
per container (argv, env, working dir, mounts, user, probes)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from devcluster.node import agent, network, plan
from devcluster.node.plan import Exec, HttpGet, Mount, Sleep, TcpSocket

MACHINE = plan.Machine(path="/venv/bin:/jdk/bin:/usr/bin", java_home="/jdk", honour_run_as=True)
CONTEXT = plan.PodContext(node_name="canaria-node-0", pod_ip="10.244.1.7", host_ip="10.244.0.1", pod_dir="/state/p1")


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-1", "namespace": "models", "uid": "u-1", "labels": {"app": "web", "track": "stable"}},
        "spec": {"containers": list(containers), **spec},
    }


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "main", "image": "python:3.11", "command": ["python", "-m", "http.server"], **fields}


def config_map(**data: str) -> dict[str, Any]:
    return {"data": data}


def secret(**data: str) -> dict[str, Any]:
    return {"data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}}


def plan_of(body: dict[str, Any], resolved: plan.Resolved | None = None) -> plan.PodPlan:
    return plan.plan_pod(body, CONTEXT, resolved or plan.Resolved(), MACHINE)


# --- argv -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fields", "argv"),
    [
        ("python:3.11", {"command": ["python", "-c", "pass"]}, ("python", "-c", "pass")),
        ("python:3.11", {"command": ["sh", "-c"], "args": ["echo $(NAME)"]}, ("sh", "-c", "echo web")),
        # The packager image's ENTRYPOINT and CMD, and Kubernetes' rules for replacing them.
        ("ghcr.io/canaria-dev/canaria-packager:0.1.0", {}, ("python", "-m", "canaria.package", "--help")),
        ("canaria-packager:test", {"args": ["--name", "m"]}, ("python", "-m", "canaria.package", "--name", "m")),
        ("canaria-packager:test", {"command": ["python", "-V"]}, ("python", "-V")),
        ("pytorch/torchserve:0.12.0-cpu", {"command": ["torchserve"], "args": ["--start"]}, ("torchserve", "--start")),
    ],
)
def test_argv_follows_kubernetes_rules_for_command_and_args(
    image: str, fields: dict[str, Any], argv: tuple[str, ...]
) -> None:
    body = {"name": "main", "image": image, "env": [{"name": "NAME", "value": "web"}], **fields}
    assert plan_of(pod(body)).containers[0].argv == argv


def test_an_image_without_a_known_entrypoint_needs_a_command() -> None:
    planned = plan_of(pod({"name": "main", "image": "example.invalid/app:1"})).containers[0]
    assert "does not know the entrypoint" in planned.error
    assert planned.argv == ()


def test_images_run_with_this_machines_python_and_java_and_the_image_workdir() -> None:
    planned = plan_of(pod(container(image="docker.io/pytorch/torchserve:0.12.0-cpu"))).containers[0]
    assert planned.env["PATH"] == MACHINE.path
    assert planned.env["JAVA_HOME"] == "/jdk"
    assert planned.workdir == "/home/model-server"
    assert plan_of(pod(container(workingDir="/srv"))).containers[0].workdir == "/srv"
    assert plan_of(pod(container())).containers[0].workdir == "/"


# --- env --------------------------------------------------------------------------------------------------


def test_env_from_values_config_maps_secrets_and_the_downward_api() -> None:
    env = [
        {"name": "PLAIN", "value": "1"},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TRACK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['track']"}}},
        {"name": "WHO", "value": "$(POD)@$(IP) $$(POD) $(UNDEFINED)"},
    ]
    env_from = [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}]
    resolved = plan.Resolved(
        config_maps={"cfg": config_map(greeting="hello")}, secrets={"creds": secret(password="pw")}
    )
    planned = plan_of(pod(container(env=env, envFrom=env_from)), resolved).containers[0]
    assert planned.error == ""
    assert {key: planned.env[key] for key in ("PLAIN", "GREETING", "PASSWORD", "POD", "NS", "IP", "TRACK")} == {
        "PLAIN": "1",
        "GREETING": "hello",
        "PASSWORD": "pw",
        "POD": "web-1",
        "NS": "models",
        "IP": "10.244.1.7",
        "TRACK": "stable",
    }
    assert planned.env["WHO"] == "web-1@10.244.1.7 $(POD) $(UNDEFINED)"
    assert planned.env["CFG_greeting"] == "hello"
    assert planned.env["HOSTNAME"] == "web-1"


@pytest.mark.parametrize(
    ("ref", "resolved", "error"),
    [
        ({"configMapKeyRef": {"name": "cfg", "key": "k"}}, plan.Resolved(), 'configmap "cfg" not found'),
        (
            {"configMapKeyRef": {"name": "cfg", "key": "k"}},
            plan.Resolved(config_maps={"cfg": config_map(other="x")}),
            "couldn't find key k in configmap models/cfg",
        ),
        ({"secretKeyRef": {"name": "creds", "key": "k"}}, plan.Resolved(), 'secret "creds" not found'),
        ({"configMapKeyRef": {"name": "cfg", "key": "k", "optional": True}}, plan.Resolved(), ""),
        ({"fieldRef": {"fieldPath": "spec.nodeName"}}, plan.Resolved(), ""),
        ({"resourceFieldRef": {"resource": "limits.cpu"}}, plan.Resolved(), "not supported by this node"),
    ],
)
def test_a_missing_reference_is_a_config_error_of_that_container(
    ref: dict[str, Any], resolved: plan.Resolved, error: str
) -> None:
    body = pod(container(env=[{"name": "X", "valueFrom": ref}]), initContainers=[container(name="init")])
    planned = plan_of(body, resolved)
    assert planned.init_containers[0].error == ""
    if error:
        assert error in planned.containers[0].error
    else:
        assert planned.containers[0].error == ""


# --- volumes and mounts -----------------------------------------------------------------------------------


def test_volumes_become_files_and_directories_of_the_pod() -> None:
    volumes = [
        {"name": "store", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "config", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "sub/a.txt", "mode": 0o600}]}},
        {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "model-files", "readOnly": True}},
        {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
    ]
    resolved = plan.Resolved(
        config_maps={"cfg": config_map(a="A", b="B")},
        secrets={"creds": secret(password="pw")},
        claims={"model-files": "/srv/pv/model-files"},
    )
    planned = {volume.name: volume for volume in plan_of(pod(container(), volumes=volumes), resolved).volumes}
    assert planned["store"] == plan.VolumePlan("store", "/state/p1/volumes/store", owned=True, size_limit="1Gi")
    assert planned["config"].files == (plan.VolumeFile("sub/a.txt", b"A", 0o600),)
    assert planned["creds"].files == (plan.VolumeFile("password", b"pw", 0o400),)
    assert planned["models"] == plan.VolumePlan("models", "/srv/pv/model-files", owned=False, read_only=True)
    assert planned["info"].files == (plan.VolumeFile("labels", b'app="web"\ntrack="stable"\n', 0o644),)
    assert all(planned[name].read_only for name in ("config", "creds", "info"))


def test_projected_service_account_volume() -> None:
    token = plan.TokenRequest(audience="", expiration_s=3607)
    projected = {
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]
    }
    body = pod(container(), volumes=[{"name": "kube-api-access", "projected": projected}])
    assert plan.references(body).tokens == frozenset({token})
    resolved = plan.Resolved(config_maps={"kube-root-ca.crt": config_map(**{"ca.crt": "CA"})}, tokens={token: "jwt"})
    files = {file.path: file.data for file in plan_of(body, resolved).volumes[0].files}
    assert files == {"token": b"jwt", "ca.crt": b"CA", "namespace": b"models"}


@pytest.mark.parametrize(
    ("volume", "resolved", "error"),
    [
        ({"configMap": {"name": "cfg"}}, plan.Resolved(), 'configmap "cfg" not found'),
        ({"configMap": {"name": "cfg", "optional": True}}, plan.Resolved(), ""),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "missing", "path": "m"}]}},
            plan.Resolved(config_maps={"cfg": config_map(a="A")}),
            'configmap "cfg" has no key "missing"',
        ),
        ({"secret": {"secretName": "creds"}}, plan.Resolved(), 'secret "creds" not found'),
        ({"persistentVolumeClaim": {"claimName": "unbound"}}, plan.Resolved(), "is not bound"),
        ({"nfs": {"server": "x", "path": "/"}}, plan.Resolved(), "nfs volumes are not supported"),
        (
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "../escape"}]}},
            plan.Resolved(config_maps={"cfg": config_map(a="A")}),
            "leaves the volume",
        ),
    ],
)
def test_a_volume_that_cannot_be_made_holds_the_whole_pod(
    volume: dict[str, Any], resolved: plan.Resolved, error: str
) -> None:
    planned = plan_of(pod(container(), volumes=[{"name": "v", **volume}]), resolved)
    if error:
        assert error in planned.volume_error
        assert "'v'" in planned.volume_error
    else:
        assert planned.volume_error == ""


def test_mounts_put_each_path_where_the_command_expects_it_parents_first() -> None:
    volumes = [{"name": "store", "emptyDir": {}}, {"name": "config", "configMap": {"name": "cfg"}}]
    mounts = [
        {"name": "store", "mountPath": "/home/model-server/model-store"},
        {"name": "config", "mountPath": "/etc/canaria"},
        {"name": "store", "mountPath": "/data/sub", "subPath": "part"},
    ]
    body = pod(
        container(image="pytorch/torchserve:0.12.0-cpu", volumeMounts=mounts, terminationMessagePath="/dev/msg"),
        volumes=volumes,
    )
    planned = plan_of(body, plan.Resolved(config_maps={"cfg": config_map(a="A")})).containers[0]
    own = "/state/p1/containers/main"
    assert planned.mounts == (
        Mount(f"{own}/tmp", "/tmp"),
        Mount(f"{own}/rootfs/home/model-server", "/home/model-server"),
        Mount("/state/p1/volumes/config", "/etc/canaria", read_only=True),
        Mount("/state/p1/volumes/store/part", "/data/sub"),
        Mount(f"{own}/termination-log", "/dev/msg"),
        Mount("/state/p1/hosts", "/etc/hosts"),
        Mount("/state/p1/volumes/store", "/home/model-server/model-store"),
    )
    assert set(planned.scratch_dirs) == {f"{own}/tmp", f"{own}/rootfs/home/model-server"}
    assert planned.termination_message_file == f"{own}/termination-log"


def test_a_read_only_root_filesystem_keeps_the_image_dirs_read_only_too() -> None:
    body = container(image="pytorch/torchserve:0.12.0-cpu", securityContext={"readOnlyRootFilesystem": True})
    planned = plan_of(pod(body)).containers[0]
    assert planned.read_only_root
    scratch = [mount for mount in planned.mounts if mount.source in planned.scratch_dirs]
    assert [(mount.target, mount.read_only) for mount in scratch] == [("/tmp", True), ("/home/model-server", True)]
    assert not plan_of(pod(container())).containers[0].read_only_root


def test_every_container_gets_the_pods_hosts_file() -> None:
    body = pod(container(), hostname="a" * 70)
    assert plan.pod_hostname(body) == "a" * 63
    assert plan.pod_hostname(pod(container())) == "web-1"
    assert plan.hosts_file_content(pod(container()), CONTEXT).splitlines()[-1] == "10.244.1.7\tweb-1"


def test_mount_points_under_an_earlier_mount_live_in_its_source() -> None:
    mounts = [
        Mount("/state/c/tmp", "/tmp"),
        Mount("/state/c/rootfs/home", "/home/model-server"),
        Mount("/state/v/store", "/home/model-server/model-store"),
        Mount("/state/c/msg", "/dev/termination-log"),
        Mount("/state/v/x", "/tmp/x"),
    ]
    locations = plan.mount_point_locations(mounts, workdir="/home/model-server")
    assert locations == [
        ("/tmp", "/state/c/tmp"),
        ("/home/model-server", "/state/c/rootfs/home"),
        ("/state/c/rootfs/home/model-store", "/state/v/store"),
        ("/dev/termination-log", "/state/c/msg"),
        ("/state/c/tmp/x", "/state/v/x"),
        ("/home/model-server", None),  # the working dir is the mount itself
    ]


# --- users, probes, hooks ---------------------------------------------------------------------------------


def test_run_as_takes_the_container_over_the_pod_and_fs_group_as_a_supplementary_group() -> None:
    security = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "supplementalGroups": [3000]}
    assert plan.run_as(pod(container(), securityContext=security), container()) == plan.RunAs(1000, 1000, (2000, 3000))
    own = container(securityContext={"runAsUser": 7})
    assert plan.run_as(pod(own, securityContext=security), own) == plan.RunAs(7, 1000, (2000, 3000))
    assert plan.run_as(pod(container()), container()) is None
    # A machine whose interpreter other users cannot run: every container runs as root.
    root_only = plan.Machine(path="/venv/bin", honour_run_as=False)
    body = pod(container(), securityContext=security)
    assert plan.plan_pod(body, CONTEXT, plan.Resolved(), root_only).containers[0].run_as is None


def test_probes_and_hooks_resolve_named_ports_and_default_to_the_pod_ip() -> None:
    body = container(
        ports=[{"name": "http", "containerPort": 8080}],
        startupProbe={"httpGet": {"path": "/ping", "port": "http"}, "periodSeconds": 5, "failureThreshold": 120},
        livenessProbe={"tcpSocket": {"port": 8080}, "initialDelaySeconds": 3, "timeoutSeconds": 5},
        readinessProbe={"exec": {"command": ["python3", "/etc/canaria/model_ready.py"]}, "periodSeconds": 5},
        lifecycle={"preStop": {"sleep": {"seconds": 5}}},
    )
    planned = plan_of(pod(body)).containers[0]
    assert planned.probes == plan.Probes(
        startup=plan.Probe(HttpGet("10.244.1.7", 8080, "/ping"), period_s=5, failure_threshold=120),
        liveness=plan.Probe(TcpSocket("10.244.1.7", 8080), initial_delay_s=3, timeout_s=5),
        readiness=plan.Probe(Exec(("python3", "/etc/canaria/model_ready.py")), period_s=5),
    )
    assert planned.pre_stop == Sleep(5)


def test_sidecar_init_containers_are_refused_not_run_as_plain_init_containers() -> None:
    body = pod(container(), initContainers=[container(name="proxy", restartPolicy="Always")])
    assert "sidecars" in plan_of(body).init_containers[0].error


@pytest.mark.parametrize(
    "probe",
    [{"httpGet": {"port": "metrics"}}, {"grpc": {"port": 9000}}],
)
def test_a_probe_this_node_cannot_run_is_a_config_error(probe: dict[str, Any]) -> None:
    assert plan_of(pod(container(readinessProbe=probe))).containers[0].error


def test_references_list_every_object_to_fetch() -> None:
    body = pod(
        container(
            env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
            envFrom=[{"configMapRef": {"name": "c1"}}],
        ),
        volumes=[
            {"name": "a", "configMap": {"name": "c2"}},
            {"name": "b", "secret": {"secretName": "s2"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "claim"}},
        ],
    )
    refs = plan.references(body)
    assert (refs.config_maps, refs.secrets, refs.claims) == ({"c1", "c2"}, {"s1", "s2"}, {"claim"})


# --- pod addresses ----------------------------------------------------------------------------------------


def test_pod_addresses_come_round_robin_from_the_pod_cidr() -> None:
    assert network.next_pod_ip("10.244.1.0/24", set()) == "10.244.1.1"
    assert network.next_pod_ip("10.244.1.0/24", {"10.244.1.1"}, after="10.244.1.1") == "10.244.1.2"
    # A freed address is not handed out again at once.
    assert network.next_pod_ip("10.244.1.0/24", set(), after="10.244.1.5") == "10.244.1.6"
    assert network.next_pod_ip("10.244.1.0/30", {"10.244.1.2"}, after="10.244.1.2") == "10.244.1.1"
    with pytest.raises(RuntimeError, match="no free pod address"):
        network.next_pod_ip("10.244.1.0/30", {"10.244.1.1", "10.244.1.2"})
    assert network.interface_name("10.244.1.7") == "cn0af40107"
    assert len(network.interface_name("10.244.255.255")) <= 15


def test_taints_are_written_as_kubelet_reads_them() -> None:
    assert agent.parse_taints("a=b:NoSchedule,c:NoExecute") == (
        {"key": "a", "value": "b", "effect": "NoSchedule"},
        {"key": "c", "effect": "NoExecute"},
    )
    assert agent.parse_taints("") == ()
    with pytest.raises(ValueError, match="expected key"):
        agent.parse_taints("a=b:Sometimes")
