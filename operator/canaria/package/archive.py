"""A TorchServe model archive (.mar), written so that the same inputs give the same bytes.

torch-model-archiver supplies the manifest; the zip is written here because the archiver's own writer is
not reproducible (it stamps the creation time into the manifest, keeps the files' mtimes and walks the
directory in filesystem order) and copies every file twice (into a temp dir, then into the zip). Entries
are STORED, not deflated: model weights barely compress, and deflating a large state_dict costs far more
time than the bytes it saves. TorchServe unpacks stored and deflated entries alike.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PackagingError, SpecField
from .sources import CHUNK_BYTES, sha256_of

MANIFEST_NAME = "MAR-INF/MANIFEST.json"
# The zip format's epoch; any fixed instant would do, this one is what reproducible builds use.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_CREATED_ON = "01/01/1980 00:00:00"
# Above this, an entry needs the zip64 extension (Java's ZipInputStream reads it).
ZIP64_THRESHOLD = (1 << 31) - 1


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its name inside the archive and where its bytes come from."""

    name: str
    source: Path | bytes


@dataclass(frozen=True)
class ModelSpec:
    """What the manifest says about the model; file fields are names inside the archive."""

    name: str
    version: str
    handler: str
    serialized_file: str | None = None
    model_file: str | None = None
    requirements_file: str | None = None
    config_file: str | None = None


@dataclass(frozen=True)
class ArchiveDigest:
    path: Path
    sha256: str
    size: int


def manifest_json(spec: ModelSpec) -> bytes:
    """TorchServe's MANIFEST.json, built by torch-model-archiver's own classes, with a fixed creation time."""
    from model_archiver.manifest_components.manifest import Manifest, RuntimeType
    from model_archiver.manifest_components.model import Model

    model = Model(
        model_name=spec.name,
        serialized_file=spec.serialized_file,
        handler=spec.handler,
        model_file=spec.model_file,
        model_version=spec.version,
        requirements_file=spec.requirements_file,
        config_file=spec.config_file,
    )
    manifest = Manifest(runtime=RuntimeType.PYTHON.value, model=model)
    manifest.manifest_dict["createdOn"] = FIXED_CREATED_ON
    return json.dumps(manifest.manifest_dict, indent=2, sort_keys=True).encode()


def check_model_name(name: str) -> None:
    """TorchServe's own rule for model names, checked before any work is done."""
    from model_archiver.model_archiver_error import ModelArchiverError
    from model_archiver.model_packaging_utils import ModelExportUtils

    try:
        ModelExportUtils.check_model_name_regex_or_exit(name)
    except ModelArchiverError:
        raise PackagingError(
            f"model name {name!r}",
            "TorchServe model names are letters, digits, '_', '-' and '.', starting with a letter or digit",
            SpecField.NAME,
        ) from None


def write_archive(spec: ModelSpec, files: list[Entry], destination: Path) -> ArchiveDigest:
    """Write the .mar atomically (a half-written archive is never visible under its final name)."""
    entries = [*files, Entry(MANIFEST_NAME, manifest_json(spec))]
    _refuse_duplicates(entries)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for entry in sorted(entries, key=lambda entry: entry.name):
                _add(archive, entry)
        digest = sha256_of(partial)
        os.replace(partial, destination)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise PackagingError(f"archive {destination}", f"cannot write ({error})", SpecField.MODEL_STORE) from error
    return ArchiveDigest(path=destination, sha256=digest, size=destination.stat().st_size)


def _refuse_duplicates(entries: list[Entry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise PackagingError(
                f"archive file {entry.name}",
                "two inputs would land on the same name in the archive",
                SpecField.EXTRA_FILES,
            )
        seen.add(entry.name)


def _add(archive: zipfile.ZipFile, entry: Entry) -> None:
    info = zipfile.ZipInfo(entry.name, date_time=FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix, so that the mode below is honoured
    info.external_attr = 0o644 << 16
    if isinstance(entry.source, bytes):
        archive.writestr(info, entry.source)
        return
    size = entry.source.stat().st_size
    with entry.source.open("rb") as source, archive.open(info, "w", force_zip64=size > ZIP64_THRESHOLD) as sink:
        shutil.copyfileobj(source, sink, CHUNK_BYTES)
