"""Every packaging failure exits non-zero with one line, on stderr and in the termination log, that says
what failed and which ModelDeployment field to fix."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fileserver import serving_directory
from tests.support.packaging import PackagerRun, package_args, run_packager_in_process, write_model_source
from tests.support.processes import free_port

Edit = Callable[[list[str], Path], list[str]]


def replace(flag: str, value: str) -> Edit:
    def edit(args: list[str], _source: Path) -> list[str]:
        edited = list(args)
        edited[edited.index(flag) + 1] = value
        return edited

    return edit


def append(*extra: str) -> Edit:
    return lambda args, _source: [*args, *extra]


def remove(flag: str) -> Edit:
    def edit(args: list[str], _source: Path) -> list[str]:
        index = args.index(flag)
        return args[:index] + args[index + 2 :]

    return edit


def handler_file(name: str, code: str) -> Edit:
    """Puts a handler file with this code into the source and packages with it."""

    def edit(args: list[str], source: Path) -> list[str]:
        (source / name).write_text(code)
        return replace("--handler", name)(args, source)

    return edit


CASES: dict[str, tuple[Edit, str, str]] = {
    "missing source": (
        replace("--source", "/nonexistent/models/cifar10"),
        "source /nonexistent/models/cifar10: no such file or directory",
        "spec.model.storageUri",
    ),
    "unsupported scheme": (
        replace("--source", "gs://bucket/model"),
        "unsupported scheme 'gs'",
        "spec.model.storageUri",
    ),
    "missing serialized file": (
        replace("--serialized-file", "nope.pt"),
        "serialized file nope.pt: not found in the model's source",
        "spec.model.serializedFile",
    ),
    "serialized file outside the source": (
        replace("--serialized-file", "../../etc/passwd"),
        "points outside the model's source",
        "spec.model.serializedFile",
    ),
    "missing model file": (replace("--model-file", "net.py"), "model file net.py: not found", "spec.model.modelFile"),
    "unknown handler": (
        replace("--handler", "resnet_magic"),
        "handler 'resnet_magic': unknown handler: use one of image_classifier, json_tensor",
        "spec.model.handler",
    ),
    "missing handler file": (replace("--handler", "custom.py"), "handler custom.py: not found", "spec.model.handler"),
    "handler that fails to import": (
        handler_file("broken.py", "import a_module_that_is_not_installed\n"),
        "handler broken.py: fails to import: ModuleNotFoundError: No module named 'a_module_that_is_not_installed'",
        "spec.model.handler",
    ),
    "handler that raises on import": (
        handler_file("raising.py", "raise RuntimeError('no GPU here')\n"),
        "handler raising.py: fails to import: RuntimeError: no GPU here",
        "spec.model.handler",
    ),
    "no handler": (remove("--handler"), "handler: required unless the source is a prebuilt .mar", "spec.model.handler"),
    "missing extra file": (
        replace("--extra-files", "index_to_name.json,labels.txt"),
        "extra file labels.txt: not found",
        "spec.model.extraFiles",
    ),
    "wildcard matching nothing": (
        replace("--extra-files", "*.csv"),
        "extra files *.csv: the pattern matches nothing",
        "spec.model.extraFiles",
    ),
    "missing requirements": (
        append("--requirements", "reqs.txt"),
        "requirements reqs.txt: not found",
        "spec.model.requirements",
    ),
    "sha256 on a directory": (
        append("--sha256", "0" * 64),
        "a sha256 was given but the source is a directory",
        "spec.model.sha256",
    ),
    "bad model name": (replace("--name", "-bad name"), "model name '-bad name'", "spec.model.name"),
    "quantising a prebuilt archive": (
        lambda args, source: [*replace("--source", str(source / "prebuilt.mar"))(args, source), "--quantize", "int8"],
        "a prebuilt .mar cannot be optimised",
        "spec.model.optimization",
    ),
    "corrupt prebuilt archive": (
        replace("--source", "SOURCE/corrupt.mar"),
        "not a TorchServe model archive",
        "spec.model.storageUri",
    ),
    "prebuilt archive of another model": (
        lambda args, source: replace("--name", "other")(
            replace("--source", str(source / "prebuilt.mar"))(args, source), source
        ),
        "the archive's modelName is 'm' but the ModelDeployment serves 'other'",
        "spec.model.storageUri",
    ),
    "unwritable model store": (
        replace("--model-store", "SOURCE/weights.pt/store"),
        "model store",
        "the serving pod's model-store volume",
    ),
}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    source = write_model_source(tmp_path / "src")
    prebuilt = tmp_path / "prebuilt-store"
    zipped = package_args(source, prebuilt, "--archive-format", "zip")
    assert run_packager_in_process(zipped, tmp_path / "prebuilt.log").exit_code == 0
    (source / "prebuilt.mar").write_bytes((prebuilt / "m.mar").read_bytes())
    (source / "corrupt.mar").write_bytes(b"this is not a zip file")
    return source


def assert_one_line_failure(run: PackagerRun, expected: str, field: str) -> None:
    assert run.exit_code != 0
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    line = lines[0]
    assert line.startswith("canaria-package: ")
    assert expected in line
    assert line.endswith(f"(check {field})")
    assert run.termination_message == line + "\n"


@pytest.mark.parametrize("case", list(CASES))
def test_failure_is_one_line_naming_the_field(tmp_path: Path, source: Path, case: str) -> None:
    edit, expected, field = CASES[case]
    args = [arg.replace("SOURCE", str(source)) for arg in edit(package_args(source, tmp_path / "store"), source)]
    run = run_packager_in_process(args, tmp_path / "termination-log")
    assert_one_line_failure(run, expected, field)
    assert not (tmp_path / "store" / "m.mar").exists()


def test_http_not_found(tmp_path: Path, source: Path) -> None:
    with serving_directory(source) as base_url:
        args = package_args(f"{base_url}/missing.tar.gz", tmp_path / "store")
        run = run_packager_in_process(args, tmp_path / "log")
    assert_one_line_failure(run, f"source {base_url}/missing.tar.gz: HTTP 404", "spec.model.storageUri")


def test_http_unreachable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/model.tar.gz"  # nothing listens there
    run = run_packager_in_process(package_args(url, tmp_path / "store"), tmp_path / "log")
    assert_one_line_failure(run, f"source {url}: unreachable", "spec.model.storageUri")


def test_http_checksum_mismatch(tmp_path: Path, source: Path) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    with serving_directory(source) as base_url:
        url = f"{base_url}/prebuilt.mar"
        args = ["--name", "m", "--version", "1.0", "--source", url, "--sha256", wrong, "--model-store", str(tmp_path)]
        run = run_packager_in_process(args, tmp_path / "log")
    assert_one_line_failure(run, f"sha256 mismatch: expected {wrong}, got ", "spec.model.sha256")


def test_unpacking_a_broken_bundle(tmp_path: Path, source: Path) -> None:
    (source / "model.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    run = run_packager_in_process(package_args(source / "model.tar.gz", tmp_path / "store"), tmp_path / "log")
    assert_one_line_failure(run, "cannot unpack model.tar.gz", "spec.model.storageUri")


def test_bundle_escaping_its_folder_is_refused(tmp_path: Path, source: Path) -> None:
    bundle = source / "evil.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("../../escaped.txt", "x")
    run = run_packager_in_process(package_args(bundle, tmp_path / "store"), tmp_path / "log")
    assert_one_line_failure(run, "refusing the path '../../escaped.txt'", "spec.model.storageUri")
    assert not (tmp_path / "escaped.txt").exists()


def test_usage_error_is_one_line_too(tmp_path: Path) -> None:
    run = run_packager_in_process(["--name", "m"], tmp_path / "log")
    assert run.exit_code == 2
    assert run.stderr.count("\n") == 1
    assert "the following arguments are required" in run.stderr
    assert run.termination_message == run.stderr


def test_no_staging_left_behind_after_a_failure(tmp_path: Path, source: Path) -> None:
    store = tmp_path / "store"
    args = replace("--serialized-file", "nope.pt")(package_args(source, store), source)
    assert run_packager_in_process(args, tmp_path / "log").exit_code != 0
    assert list(store.iterdir()) == []
