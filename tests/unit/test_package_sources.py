"""Where a model can come from: http(s) files and bundles, S3 prefixes and objects, paths, prebuilt .mar.

The S3 tests run moto's server, a real S3 REST API over HTTP on loopback (no S3 service is reachable
here); boto3 in the packager talks to it through the endpoint override, as it would to MinIO or AWS.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import canaria.package.archive
import canaria.package.sources
from tests.support.fileserver import serving_directory
from tests.support.packaging import (
    PackagerRun,
    archive_files,
    package_args,
    recomputed_digest,
    run_packager_in_process,
    write_model_source,
)
from tests.support.processes import free_port
from tests.support.s3 import S3Server, running_s3

EXPECTED_FILES = {"MAR-INF/MANIFEST.json", "canaria_base.py", "image_classifier.py", "index_to_name.json"}


def archive_names(run: PackagerRun) -> set[str]:
    return set(archive_files(Path(run.summary["archive"])))


def reference_digest(tmp_path: Path, source: Path) -> str:
    """The digest of the archive built from the same files on local disk."""
    run = run_packager_in_process(package_args(source, tmp_path / "reference"), tmp_path / "reference.log")
    digest: str = run.summary["digest"]
    return digest


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_model_source(tmp_path / "src")


def make_bundle(source: Path, bundle: Path) -> Path:
    with tarfile.open(bundle, "w:gz") as archive:
        archive.add(source, arcname="cifar10")  # one top-level folder, as `tar czf` of a directory makes
    return bundle


def test_http_bundle_is_unpacked_and_gives_the_same_archive_as_the_files(tmp_path: Path, source: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    bundle = make_bundle(source, served / "cifar10.tar.gz")
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    with serving_directory(served) as base_url:
        args = package_args(f"{base_url}/cifar10.tar.gz", tmp_path / "store", "--sha256", digest)
        run = run_packager_in_process(args, tmp_path / "log")
    assert EXPECTED_FILES | {"weights.pt", "model.py"} <= archive_names(run)
    assert run.summary["digest"] == reference_digest(tmp_path, source)


def test_http_single_file_is_the_serialized_file(tmp_path: Path, source: Path) -> None:
    with serving_directory(source) as base_url:
        url = f"{base_url}/weights.pt"
        args = ["--name", "m", "--version", "1.0", "--source", url, "--handler", "json_tensor"]
        run = run_packager_in_process([*args, "--model-store", str(tmp_path / "store")], tmp_path / "log")
    assert archive_names(run) == {"MAR-INF/MANIFEST.json", "canaria_base.py", "json_tensor.py", "weights.pt"}


def test_http_prebuilt_archive_with_checksum(tmp_path: Path, source: Path) -> None:
    zipped = package_args(source, tmp_path / "www", "--archive-format", "zip")
    built = run_packager_in_process(zipped, tmp_path / "built.log").summary
    with serving_directory(tmp_path / "www") as base_url:
        checksum = hashlib.sha256((tmp_path / "www" / "m.mar").read_bytes()).hexdigest()
        args = ["--name", "m", "--version", "1.0", "--source", f"{base_url}/m.mar", "--sha256", checksum]
        run = run_packager_in_process([*args, "--model-store", str(tmp_path / "store")], tmp_path / "log")
    assert run.summary["digest"] == built["digest"] == recomputed_digest(tmp_path / "store" / "m.mar")
    assert (tmp_path / "store" / "m.mar").read_bytes() == (tmp_path / "www" / "m.mar").read_bytes()


@pytest.mark.parametrize("archive_format", ["directory", "zip"])
def test_http_single_file_with_checksum_gets_the_archive_digest(
    tmp_path: Path, source: Path, archive_format: str
) -> None:
    """The download's BLAKE3 comes from the sha256 check's pass; the archive digest must still be right."""
    checksum = hashlib.sha256((source / "weights.pt").read_bytes()).hexdigest()
    with serving_directory(source) as base_url:
        args = ["--name", "m", "--version", "1.0", "--source", f"{base_url}/weights.pt", "--sha256", checksum]
        args += ["--handler", "json_tensor", "--archive-format", archive_format]
        run = run_packager_in_process([*args, "--model-store", str(tmp_path / "store")], tmp_path / "log")
    archive = tmp_path / "store" / "m.mar"
    assert archive_files(archive)["weights.pt"] == (source / "weights.pt").read_bytes()
    assert run.summary["digest"] == recomputed_digest(archive)
    assert (tmp_path / "store" / "m.digest").read_text() == f"{recomputed_digest(archive)}  m.mar\n"


def test_file_uri_and_zip_bundle(tmp_path: Path, source: Path) -> None:
    bundle = tmp_path / "model.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for path in source.iterdir():
            archive.write(path, path.name)
    run = run_packager_in_process(package_args(f"file://{bundle}", tmp_path / "store"), tmp_path / "log")
    assert run.summary["digest"] == reference_digest(tmp_path, source)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        server.client().create_bucket(Bucket="models")
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def test_s3_prefix_is_downloaded_with_its_layout(tmp_path: Path, source: Path, s3_env: S3Server) -> None:
    s3_env.upload_directory("models", "cifar10/v1", source)
    s3_env.upload_directory("models", "cifar10/v10", write_model_source(tmp_path / "other", weights=b"v10"))
    run = run_packager_in_process(package_args("s3://models/cifar10/v1", tmp_path / "store"), tmp_path / "log")
    assert run.summary["digest"] == reference_digest(tmp_path, source), "only v1/, not v10/"


def test_s3_single_object(tmp_path: Path, source: Path, s3_env: S3Server) -> None:
    s3_env.client().upload_file(str(source / "weights.pt"), "models", "single/weights.pt")
    args = ["--name", "m", "--version", "1.0", "--source", "s3://models/single/weights.pt", "--handler", "json_tensor"]
    run = run_packager_in_process([*args, "--model-store", str(tmp_path / "store")], tmp_path / "log")
    assert "weights.pt" in archive_names(run)


@pytest.mark.parametrize(
    ("uri", "problem"),
    [("s3://models/nothing/here", "object not found"), ("s3://no-such-bucket/model", "bucket not found")],
)
def test_s3_missing_things(tmp_path: Path, s3_env: S3Server, uri: str, problem: str) -> None:
    run = run_packager_in_process(package_args(uri, tmp_path / "store"), tmp_path / "log")
    assert run.exit_code != 0
    assert run.stderr == f"canaria-package: source {uri}: {problem} (check spec.model.storageUri)\n"


def test_s3_endpoint_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    run = run_packager_in_process(package_args("s3://models/cifar10", tmp_path / "store"), tmp_path / "log")
    assert run.exit_code != 0
    assert "S3 endpoint unreachable" in run.stderr


def test_s3_without_credentials(tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance identity to fall back on
    run = run_packager_in_process(package_args("s3://models/cifar10", tmp_path / "store"), tmp_path / "log")
    assert run.exit_code != 0
    assert "no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret)" in run.stderr


@pytest.fixture
def downloads_never_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any hash of a file in the staging directory (where downloads land) fails the packager: a download is
    hashed while it is written, never read again."""

    def refusing(hash_file: Any) -> Any:
        def guarded(path: Path, *args: Any, **kwargs: Any) -> Any:
            assert ".canaria-staging-" not in str(path), f"{path} was read back to hash it"
            return hash_file(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(canaria.package.archive, "blake3_of", refusing(canaria.package.archive.blake3_of))
    for name in ("sha256_of", "sha256_and_blake3_of"):
        monkeypatch.setattr(canaria.package.sources, name, refusing(getattr(canaria.package.sources, name)))


@pytest.mark.usefixtures("downloads_never_read_back")
@pytest.mark.parametrize("with_checksum", [False, True])
def test_http_download_is_hashed_as_it_is_written(tmp_path: Path, with_checksum: bool) -> None:
    source = write_model_source(tmp_path / "src", weights=os.urandom(20 << 20))  # several chunks
    checksum = ["--sha256", hashlib.sha256((source / "weights.pt").read_bytes()).hexdigest()] if with_checksum else []
    with serving_directory(source) as base_url:
        args = ["--name", "m", "--version", "1.0", "--source", f"{base_url}/weights.pt", *checksum]
        run = run_packager_in_process([*args, "--handler", "json_tensor", "--model-store", str(tmp_path / "store")],
                                      tmp_path / "log")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    assert run.summary["digest"] == recomputed_digest(tmp_path / "store" / "m.mar")


@pytest.mark.usefixtures("downloads_never_read_back")
def test_s3_ranges_fetched_concurrently_are_hashed_in_order(tmp_path: Path, s3_env: S3Server) -> None:
    source = write_model_source(tmp_path / "src", weights=os.urandom(40 << 20))  # 5 ranges of s3transfer's 8 MiB
    s3_env.upload_directory("models", "big/v1", source)
    run = run_packager_in_process(package_args("s3://models/big/v1", tmp_path / "store"), tmp_path / "log")
    assert run.exit_code == 0, run.stderr
    assert (
        run.summary["digest"] == recomputed_digest(tmp_path / "store" / "m.mar") == reference_digest(tmp_path, source)
    )


def test_a_download_is_never_linked_in_place(tmp_path: Path, source: Path) -> None:
    """--source-in-place names a path both containers mount; a download lives in staging, deleted afterwards."""
    with serving_directory(source) as base_url:
        args = ["--name", "m", "--version", "1.0", "--source", f"{base_url}/weights.pt", "--source-in-place"]
        run = run_packager_in_process([*args, "--handler", "json_tensor", "--model-store", str(tmp_path / "store")],
                                      tmp_path / "log")  # fmt: skip
    archive = Path(run.summary["archive"])
    assert not any(path.is_symlink() for path in archive.rglob("*"))
    assert archive_files(archive)["weights.pt"] == (source / "weights.pt").read_bytes()
