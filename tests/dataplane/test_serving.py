"""The CIFAR-10 example (the CIFAR-10 network trained on scikit-learn's handwritten digits), packaged by
canaria.package, served by a real TorchServe with Canaria's handlers, asked about digits it never saw in training."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from tests.support.torchserve import TorchServe, encoded_image

from .conftest import CIFAR10, FIXTURES, cifar10_args, run_packager, train

pytestmark = pytest.mark.torchserve

LABELS = json.loads((Path(train.__file__).parent / "index_to_name.json").read_text())
HELD_OUT = train.held_out_digits()  # 360 digits that training never sees
FIRST_OF_EACH = train.first_of_each_class(HELD_OUT)


def digit_image(label: int, image_format: str = "PNG") -> bytes:
    """The first held-out image of the digit `label`, as an image file."""
    return encoded_image(FIRST_OF_EACH.images[label], image_format)


def top_labels(server: TorchServe, name: str, images: np.ndarray, image_format: str = "PNG") -> list[str]:
    """The label each image gets from the served model, one request per image."""
    answers = []
    for pixels in images:
        response = server.predict(name, encoded_image(pixels, image_format))
        assert response.status_code == 200, response.text
        answers.append(next(iter(response.json())))
    return answers


def accuracy(answers: list[str], labels: np.ndarray) -> float:
    return float(np.mean([answer == LABELS[str(label)] for answer, label in zip(answers, labels, strict=True)]))


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none yet)."""
    total = 0.0
    for line in metrics_text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def test_served_model_answers_every_held_out_digit_as_the_trained_model_does(
    server: TorchServe, cifar10_source: Path
) -> None:
    model = train.Net()
    model.load_state_dict(torch.load(cifar10_source / "cifar10_net.pt"))
    expected = [LABELS[str(index)] for index in train.predictions(model.eval(), HELD_OUT.images)]
    answers = top_labels(server, CIFAR10.name, HELD_OUT.images)
    assert answers == expected  # PNG decoding and normalisation in the handler match training's exactly
    assert accuracy(answers, HELD_OUT.labels) >= 0.95  # 0.975 when measured


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_classifies_the_first_held_out_image_of_each_digit(server: TorchServe, image_format: str) -> None:
    for label in range(10):
        response = server.predict(CIFAR10.name, digit_image(label, image_format))
        assert response.status_code == 200, response.text
        top = response.json()
        assert next(iter(top)) == LABELS[str(label)], top
        assert len(top) == 3  # model-config.yaml sets topk 3
        assert list(top.values()) == sorted(top.values(), reverse=True)


def test_jpeg_compressed_held_out_digits_stay_accurate(server: TorchServe) -> None:
    sample = slice(0, 100)
    answers = top_labels(server, CIFAR10.name, HELD_OUT.images[sample], "JPEG")
    assert accuracy(answers, HELD_OUT.labels[sample]) >= 0.9


def test_accepts_json_tensors_one_or_several(server: TorchServe) -> None:
    tensors = train.to_model_input(FIRST_OF_EACH.images[[1, 8]]).tolist()
    single = server.predict(CIFAR10.name, json.dumps(tensors[0]), "application/json")
    assert single.status_code == 200, single.text
    assert next(iter(single.json())) == LABELS["1"]
    several = server.predict(CIFAR10.name, json.dumps({"instances": tensors}), "application/json")
    assert several.status_code == 200, several.text
    assert [next(iter(p)) for p in several.json()["predictions"]] == [LABELS["1"], LABELS["8"]]


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\x89PNG but not really", "application/octet-stream", "not a readable image"),
        (b"hello", "application/octet-stream", "expected image bytes"),
        ("[[1, 2], [3]]", "application/json", "not a rectangular array"),
        ("[[1.0, 2.0]]", "application/json", "expected an input of shape [3, 32, 32]"),
        ('{"pixels": []}', "application/json", '"data"'),
    ],
)
def test_malformed_request_gets_400_and_the_worker_survives(
    server: TorchServe, body: bytes | str, content_type: str, message: str
) -> None:
    worker_before = server.describe(CIFAR10.name)[0]["workers"][0]  # type: ignore[index]
    response = server.predict(CIFAR10.name, body, content_type)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert server.predict(CIFAR10.name, digit_image(3)).status_code == 200
    worker_after = server.describe(CIFAR10.name)[0]["workers"][0]  # type: ignore[index]
    assert (worker_after["pid"], worker_after["status"]) == (worker_before["pid"], "READY")


def test_per_model_metrics_count_requests_and_latency(server: TorchServe) -> None:
    labels = {"model_name": CIFAR10.name}
    before = server.metrics()
    for label in range(5):
        assert server.predict(CIFAR10.name, digit_image(label)).status_code == 200
    after = server.metrics()
    requests_delta = metric_value(after, "ts_inference_requests_total", **labels) - metric_value(
        before, "ts_inference_requests_total", **labels
    )
    assert requests_delta == 5
    latency_delta = metric_value(after, "ts_inference_latency_microseconds", **labels) - metric_value(
        before, "ts_inference_latency_microseconds", **labels
    )
    assert latency_delta > 0
    # TorchServe labels requests that name no version "default", not with the served version.
    assert 'model_version="default"' in after


def test_batching_serves_concurrent_requests_in_one_forward_pass(
    server: TorchServe, cifar10_source: Path, model_store: Path
) -> None:
    run_packager(*cifar10_args(cifar10_source, model_store, "cifar10-batched"))
    server.register("cifar10-batched.mar", batch_size=8, max_batch_delay_ms=2000)
    bodies = [digit_image(label) for label in range(7)] + [b"not an image"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda body: server.predict("cifar10-batched", body), bodies))
    batch_sizes = {response.headers.get("X-Canaria-Batch-Size") for response in responses[:7]}
    assert [r.status_code for r in responses] == [200] * 7 + [400], [r.text for r in responses]
    assert [next(iter(r.json())) for r in responses[:7]] == [LABELS[str(label)] for label in range(7)]
    assert batch_sizes == {"8"}, "all eight requests (the malformed one too) shared one batch"


def test_broken_handler_answers_503_and_counts_5xx(server: TorchServe, model_store: Path) -> None:
    source = FIXTURES  # the broken handler needs no weights
    run_packager(
        "--name", "broken", "--version", "1.0", "--source", str(source),
        "--handler", "broken_handler.py", "--model-store", str(model_store),
    )  # fmt: skip
    server.register("broken.mar")
    before = metric_value(server.metrics(), "Requests5XX")
    responses = [server.predict("broken", b"anything") for _ in range(3)]
    assert [r.status_code for r in responses] == [503] * 3
    assert metric_value(server.metrics(), "Requests5XX") - before == 3


def test_json_tensor_handler_returns_regression_outputs(
    server: TorchServe, affine_source: Path, model_store: Path
) -> None:
    run_packager(
        "--name", "affine", "--version", "1.0", "--source", str(affine_source),
        "--serialized-file", "affine.pt", "--model-file", "affine_model.py", "--handler", "json_tensor",
        "--model-store", str(model_store), "--archive-format", "zip",  # the other layout, served too
    )  # fmt: skip
    assert (model_store / "affine.mar").is_file()
    server.register("affine.mar", batch_size=4, max_batch_delay_ms=20)
    response = server.predict("affine", json.dumps({"instances": [[1, 0, 0, 0], [0, 1, 1, 1]]}), "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[1.5, -1.25], [9.5, 2.25]]}
    errors_before = metric_value(server.metrics(), "Requests5XX")
    wrong_shape = server.predict("affine", json.dumps([1, 2, 3]), "application/json")
    assert wrong_shape.status_code == 500  # no input_shape configured: the model itself rejects it
    assert "the model failed on this input" in wrong_shape.json()["message"]
    assert metric_value(server.metrics(), "Requests5XX") - errors_before == 1
    assert server.predict("affine", "not json", "text/plain").status_code == 400


@pytest.mark.parametrize("optimisation", [["--quantize", "int8"], ["--torchscript"]])
def test_optimised_archive_still_classifies(
    server: TorchServe, cifar10_source: Path, model_store: Path, optimisation: list[str]
) -> None:
    name = "cifar10-" + optimisation[-1].lstrip("-")
    summary = run_packager(*cifar10_args(cifar10_source, model_store, name), *optimisation)
    report = summary["optimization"]
    assert isinstance(report, dict)
    assert report["torchscript"] is True
    assert report["top1Agreement"] >= 0.95
    if "int8" in optimisation:
        assert report["bytesAfter"] < report["bytesBefore"] / 2
    server.register(f"{name}.mar")
    assert top_labels(server, name, FIRST_OF_EACH.images) == [LABELS[str(label)] for label in range(10)]
    sample = slice(0, 100)
    assert accuracy(top_labels(server, name, HELD_OUT.images[sample]), HELD_OUT.labels[sample]) >= 0.95


def test_management_api_reports_the_packaged_version(server: TorchServe) -> None:
    described = server.describe(CIFAR10.name)
    assert described is not None
    assert described[0]["modelVersion"] == CIFAR10.version
    assert described[0]["batchSize"] == 1
    assert requests.get(f"{server.inference_url}/ping", timeout=5).json()["status"] == "Healthy"
