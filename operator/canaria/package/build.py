"""Turn a ModelDeployment's model into `<model-store>/<name>.mar`, its digest, and TorchServe's config.

The digest (`blake3:<hex>`, see `archive.py` for how to recompute it) is printed in the summary line and
written to `<model-store>/<name>.digest` as `blake3:<hex>  <name>.mar`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .archive import (
    MANIFEST_NAME,
    ArchiveDigest,
    ArchiveFormat,
    Entry,
    ModelSpec,
    check_model_name,
    directory_entries,
    place_and_hash,
    remove_path,
    write_archive,
    write_entries,
)
from .digests import labelled
from .errors import PackagingError, SpecField
from .handlers import check_handler_imports, resolve_handler
from .optimize import Optimization, optimize
from .paths import extra_file_entries, resolve_in_source
from .sources import FetchedModel, fetch

# TorchServe's per-model config; packed when it sits at the root of the model's source.
MODEL_CONFIG_NAME = "model-config.yaml"
CONFIG_PROPERTIES_NAME = "config.properties"


@dataclass(frozen=True)
class PackageRequest:
    """The init container's arguments (see `cli.py`); relative paths resolve against the source's root."""

    name: str
    version: str
    source: str
    handler: str | None
    model_store: Path
    sha256: str | None = None
    serialized_file: str | None = None
    model_file: str | None = None
    extra_files: tuple[str, ...] = ()
    requirements: str | None = None
    optimization: Optimization = field(default_factory=Optimization)
    config: Path | None = None
    archive_format: ArchiveFormat = ArchiveFormat.DIRECTORY
    # The serving container mounts a local source at the same path (read-only): link to it, copy nothing.
    source_in_place: bool = False


@dataclass(frozen=True)
class PackageResult:
    archive: Path
    digest: str  # blake3:<hex>
    size: int
    optimization: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"archive": str(self.archive), "digest": self.digest, "bytes": self.size}
        if self.optimization is not None:
            summary["optimization"] = self.optimization
        return summary


def package(request: PackageRequest) -> PackageResult:
    check_model_name(request.name)
    _ensure_model_store(request.model_store)
    # Downloads go onto the model store's volume, which is sized for the model; /tmp may not be.
    staging = Path(tempfile.mkdtemp(prefix=".canaria-staging-", dir=request.model_store))
    try:
        fetched = fetch(request.source, staging, request.sha256)
        destination = request.model_store / f"{request.name}.mar"
        in_place = in_place_root(request, fetched, staging)
        if fetched.prebuilt_archive is not None:
            digest, report = _install_prebuilt(request, fetched, destination, staging, in_place), None
        else:
            digest, report = _build(request, fetched, staging, destination, in_place)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_digest_file(digest, request.model_store / f"{request.name}.digest")
    if request.config is not None:
        _install_config(request.config, request.model_store / CONFIG_PROPERTIES_NAME)
    return PackageResult(digest.path, digest.digest, digest.size, report)


def in_place_root(request: PackageRequest, fetched: FetchedModel, staging: Path) -> Path | None:
    """The directory whose files the archive may link to: the source's, when the serving container sees it.

    What was downloaded or unpacked lives in `staging`, which is deleted after packaging: never linked to.
    """
    if not request.source_in_place or fetched.root.resolve().is_relative_to(staging.resolve()):
        return None
    return fetched.root


def _build(
    request: PackageRequest, fetched: FetchedModel, staging: Path, destination: Path, in_place: Path | None
) -> tuple[ArchiveDigest, dict[str, Any] | None]:
    root = fetched.root
    serialized = _optional_file(root, request.serialized_file, SpecField.SERIALIZED_FILE) or fetched.single_file
    model_file = _optional_file(root, request.model_file, SpecField.MODEL_FILE)
    if not request.handler:
        raise PackagingError("handler", "required unless the source is a prebuilt .mar", SpecField.HANDLER)
    handler_name, handler_entries = resolve_handler(request.handler, root)
    extras = extra_file_entries(root, list(request.extra_files))
    requirements = _optional_file(root, request.requirements, SpecField.REQUIREMENTS)
    model_config = root / MODEL_CONFIG_NAME if (root / MODEL_CONFIG_NAME).is_file() else None
    user_handler = next(
        (e.source for e in handler_entries if isinstance(e.source, Path) and e.source.is_relative_to(root)), None
    )
    if user_handler is not None and requirements is None:  # with requirements, TorchServe installs them first
        check_handler_imports(user_handler, root)

    report = None
    if request.optimization.requested:
        serialized, report = optimize(request.optimization, serialized, model_file, _input_shape(model_config), staging)
        model_file = None  # the TorchScript file carries the model's code

    files = [Entry(path.name, path) for path in (serialized, model_file, requirements, model_config) if path]
    spec = ModelSpec(
        name=request.name,
        version=request.version,
        handler=handler_name,
        serialized_file=serialized.name if serialized else None,
        model_file=model_file.name if model_file else None,
        requirements_file=requirements.name if requirements else None,
        config_file=model_config.name if model_config else None,
    )
    # What was hashed while it downloaded (or while its sha256 was checked) is not hashed again.
    entries = [
        replace(entry, known_blake3=fetched.known_blake3(entry.source)) if isinstance(entry.source, Path) else entry
        for entry in (*files, *handler_entries, *extras)
    ]
    archive = write_archive(spec, entries, destination, request.archive_format, scratch=staging, in_place=in_place)
    return archive, report


def _optional_file(root: Path, relative: str | None, spec_field: SpecField) -> Path | None:
    return resolve_in_source(root, relative, spec_field) if relative else None


def _input_shape(model_config: Path | None) -> list[int] | None:
    """The model's input shape, from the handler section of model-config.yaml, for the fidelity check."""
    if model_config is None:
        return None
    import yaml

    handler = (yaml.safe_load(model_config.read_text()) or {}).get("handler") or {}
    if "input_shape" in handler:
        return [int(size) for size in handler["input_shape"]]
    if "image_size" in handler:
        size = handler["image_size"]
        height, width = (size, size) if isinstance(size, int) else size
        return [3, int(height), int(width)]
    return None


def _install_prebuilt(
    request: PackageRequest, fetched: FetchedModel, destination: Path, staging: Path, in_place: Path | None
) -> ArchiveDigest:
    """A prebuilt .mar is served as it is, once its manifest matches the ModelDeployment."""
    archive = fetched.prebuilt_archive
    assert archive is not None
    if request.optimization.requested:
        raise PackagingError(
            f"source {request.source}",
            "a prebuilt .mar cannot be optimised: give the model's files instead",
            SpecField.OPTIMIZATION,
        )
    model = _prebuilt_manifest(request.source, archive).get("model", {})
    for key, wanted in (("modelName", request.name), ("modelVersion", request.version)):
        if model.get(key) != wanted:
            raise PackagingError(
                f"source {request.source}",
                f"the archive's {key} is {model.get(key)!r} but the ModelDeployment serves {wanted!r}",
                SpecField.STORAGE_URI,
            )
    if archive.is_dir():  # an unpacked .mar, e.g. on a PVC: copied (or linked) file for file
        return write_entries(directory_entries(archive), destination, ArchiveFormat.DIRECTORY, in_place=in_place)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        remove_path(partial)
        digest = place_and_hash(
            archive, partial, scratch=staging, in_place=in_place, known_blake3=fetched.single_file_blake3
        )
        remove_path(destination)
        os.replace(partial, destination)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise PackagingError(f"archive {destination}", f"cannot write ({error})", SpecField.MODEL_STORE) from error
    return ArchiveDigest(destination, labelled(digest), destination.stat().st_size)


def _prebuilt_manifest(source: str, archive: Path) -> dict[str, Any]:
    try:
        if archive.is_dir():
            directory_manifest: dict[str, Any] = json.loads((archive / MANIFEST_NAME).read_bytes())
            return directory_manifest
        with zipfile.ZipFile(archive) as opened:
            manifest: dict[str, Any] = json.loads(opened.read(MANIFEST_NAME))
            return manifest
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise PackagingError(
            f"source {source}", f"not a TorchServe model archive ({error})", SpecField.STORAGE_URI
        ) from error


def _ensure_model_store(model_store: Path) -> None:
    try:
        model_store.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PackagingError(f"model store {model_store}", f"cannot create ({error})", SpecField.MODEL_STORE) from error


def _write_digest_file(digest: ArchiveDigest, path: Path) -> None:
    # b3sum's format with the algorithm in front: for a zip, `sed 's/^blake3://' <name>.digest | b3sum -c`.
    path.write_text(f"{digest.digest}  {digest.path.name}\n")


def _install_config(config: Path, destination: Path) -> None:
    try:
        shutil.copyfile(config, destination)
    except OSError as error:
        raise PackagingError(f"config {config}", f"cannot copy ({error})", SpecField.CONFIG) from error
