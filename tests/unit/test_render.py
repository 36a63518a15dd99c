from __future__ import annotations

import json
import subprocess
import sys

from canaria import render
from canaria.render import STABLE, Settings
from tests.support.processes import free_port
from tests.unit.conftest import model_deployment

SETTINGS = Settings(packager_image="packager:test")


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_config_properties_binds_management_to_loopback_and_sets_security_defaults(md):
    props = properties(render.config_properties(md, md["spec"]["model"]))
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["metrics_mode"] == "prometheus"
    assert props["disable_token_authorization"] == "true"
    assert props["enable_model_api"] == "false"  # nothing in the pod may register a model
    assert props["allowed_urls"] == "file:///home/model-server/model-store/.*"
    assert props["load_models"] == "cifar10.mar"


def test_config_properties_carries_workers_batching_and_timeouts():
    md = model_deployment(
        serving={
            "workers": {"min": 2, "max": 4},
            "batching": {"maxBatchSize": 8, "maxBatchDelayMs": 20},
            "responseTimeoutSeconds": 30,
        }
    )
    models = json.loads(properties(render.config_properties(md, md["spec"]["model"]))["models"])
    assert models == {
        "cifar10": {
            "1.0": {
                "defaultVersion": True,
                "marName": "cifar10.mar",
                "minWorkers": 2,
                "maxWorkers": 4,
                "batchSize": 8,
                "maxBatchDelay": 20,
                "responseTimeout": 30,
            }
        }
    }


def test_model_name_defaults_to_object_name_and_can_be_set():
    md = model_deployment(model={"name": "classifier"})
    assert "load_models=classifier.mar" in render.config_properties(md, md["spec"]["model"])
    assert render.inference_url(md, SETTINGS) == ("http://cifar10.models.svc.cluster.local:8080/predictions/classifier")


def test_every_child_is_owned_by_the_model_deployment(md):
    children = [
        render.config_map(md, STABLE, md["spec"]["model"]),
        render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS),
        render.service(md),
        render.service_monitor(md),
    ]
    for child in children:
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == "uid-1" and owner["controller"] is True, child["kind"]
        assert child["metadata"]["labels"][render.MANAGED_BY] == "canaria"
        assert child["metadata"]["namespace"] == "models"


def test_service_exposes_inference_and_metrics_but_never_management(md):
    ports = {p["port"] for p in render.service(md)["spec"]["ports"]}
    assert ports == {8080, 8082}


def test_readiness_needs_the_minimum_ready_workers_not_ping():
    md = model_deployment(serving={"workers": {"min": 3, "max": 3}})
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    (torchserve,) = pod["containers"]
    probe = torchserve["readinessProbe"]
    assert "httpGet" not in probe
    assert probe["exec"]["command"] == ["python3", "/etc/canaria/model_ready.py", "cifar10", "1.0", "3"]
    assert torchserve["livenessProbe"]["httpGet"]["path"] == "/ping"


def test_pods_run_restricted(md):
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


def test_rolling_update_never_removes_serving_pods_first(md):
    strategy = render.deployment(md, STABLE, md["spec"]["model"], 2, SETTINGS)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_config_change_rolls_the_pods_through_the_template_hash():
    before = model_deployment()
    after = model_deployment(serving={"batching": {"maxBatchSize": 4}})

    def hash_of(md):
        template = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]
        return template["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]

    assert hash_of(before) != hash_of(after)
    assert hash_of(before) == hash_of(model_deployment())


def test_packager_gets_the_model_files_and_optimisations():
    md = model_deployment(
        model={
            "sha256": "a" * 64,
            "requirements": "requirements.txt",
            "optimization": {"quantization": "Int8Dynamic", "torchscript": True},
        }
    )
    init = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"][
        "initContainers"
    ][0]
    args = init["args"]
    assert init["image"] == "packager:test"
    assert args[args.index("--source") + 1] == "https://models.example/cifar10.tar.gz"
    assert args[args.index("--extra-files") + 1] == "index_to_name.json"
    assert args[args.index("--sha256") + 1] == "a" * 64
    assert args[args.index("--quantize") + 1] == "int8"
    assert "--torchscript" in args
    assert init["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pvc_source_is_mounted_read_only_and_passed_as_a_path():
    md = model_deployment(model={"storageUri": "pvc://model-files/cifar10/v1"})
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "model-source", "persistentVolumeClaim": {"claimName": "model-files", "readOnly": True}} in (
        pod["volumes"]
    )
    args = pod["initContainers"][0]["args"]
    assert args[args.index("--source") + 1] == "/mnt/models/cifar10/v1"


def test_pvc_source_is_served_in_place_from_the_same_read_only_mount():
    pvc = model_deployment(model={"storageUri": "pvc://model-files/cifar10/v1"})
    pod = render.deployment(pvc, STABLE, pvc["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    (packager,), (torchserve,) = pod["initContainers"], pod["containers"]
    source_mount = {"name": "model-source", "mountPath": "/mnt/models", "readOnly": True}
    assert source_mount in packager["volumeMounts"] and source_mount in torchserve["volumeMounts"]
    assert "--source-in-place" in packager["args"]  # the archive's links resolve in the torchserve container
    md = model_deployment()
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    assert "--source-in-place" not in pod["initContainers"][0]["args"]
    assert "model-source" not in {mount["name"] for mount in pod["containers"][0]["volumeMounts"]}


def test_s3_credentials_come_from_the_named_secret():
    md = model_deployment(
        model={
            "storageUri": "s3://bucket/cifar10",
            "s3": {"endpoint": "http://minio.storage:9000", "credentialsSecret": "s3-creds"},
        }
    )
    env = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]["initContainers"][
        0
    ]["env"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"} in env
    assert {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}},
    } in env


def test_user_pod_settings_pass_through():
    md = model_deployment(
        serving={
            "nodeSelector": {"pool": "cpu"},
            "serviceAccountName": "reader",
            "tolerations": [{"key": "ml", "operator": "Exists"}],
            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
        }
    )
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["serviceAccountName"] == "reader"
    assert pod["automountServiceAccountToken"] is False  # an identity for a bucket is no reason for an API token
    assert pod["tolerations"] == [{"key": "ml", "operator": "Exists"}]
    assert pod["containers"][0]["env"][-1] == {"name": "OMP_NUM_THREADS", "value": "1"}


def test_the_api_token_is_mounted_only_when_asked_for():
    md = model_deployment(serving={"serviceAccountName": "reader", "automountServiceAccountToken": True})
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True


def test_root_filesystems_are_read_only_and_every_writable_path_is_a_bounded_scratch_volume():
    md = model_deployment(model={"storageUri": "pvc://model-files/cifar10"}, serving={"modelStoreSizeLimit": "3Gi"})
    pod = render.deployment(md, STABLE, md["spec"]["model"], 1, SETTINGS)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        for mount in container["volumeMounts"]:
            if not mount.get("readOnly"):
                assert "emptyDir" in volumes[mount["name"]], (container["name"], mount)
    assert volumes["model-store"]["emptyDir"] == {"sizeLimit": "3Gi"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "3Gi"}
    (torchserve,) = pod["containers"]
    writable = {m["mountPath"] for m in torchserve["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/home/model-server/logs"}  # TorchServe never writes the model store
    env = {e["name"]: e.get("value") for e in torchserve["env"]}
    assert env["LOG_LOCATION"] == env["METRICS_LOCATION"] == "/home/model-server/logs"
    assert model_deployment()["spec"]["serving"]["modelStoreSizeLimit"] == "10Gi"


def test_service_monitor_scrapes_metrics_with_track_and_version_labels():
    md = model_deployment(monitoring={"serviceMonitor": {"interval": "5s", "labels": {"release": "prom"}}})
    monitor = render.service_monitor(md)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "5s"}]
    assert set(monitor["spec"]["podTargetLabels"]) == {render.TRACK_LABEL, render.VERSION_LABEL}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= render.service(md)["metadata"]["labels"].items()


def test_the_readiness_probe_runs_the_script_the_config_map_ships(md, tmp_path):
    """The probe's command names a file of the mounted ConfigMap, and that file is a script that fails the
    probe when TorchServe does not answer (tests/dataplane runs it against a real TorchServe)."""
    model = md["spec"]["model"]
    pod = render.deployment(md, STABLE, model, 1, SETTINGS)["spec"]["template"]["spec"]
    (torchserve,) = pod["containers"]
    interpreter, script, *args = torchserve["readinessProbe"]["exec"]["command"]
    (mount,) = [m for m in torchserve["volumeMounts"] if script.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = render.config_map(md, STABLE, model)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    shipped = tmp_path / "model_ready.py"
    shipped.write_text(config_map["data"][script.removeprefix(mount["mountPath"] + "/")])
    assert interpreter == "python3"
    result = subprocess.run(
        [sys.executable, str(shipped), *args, f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True
    )
    assert result.returncode == 1 and "not described by TorchServe" in result.stdout
