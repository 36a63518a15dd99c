"""A TorchServe model archive, written so that the same inputs give the same bytes and the same digest.

Two layouts, both named `<name>.mar` in the model store and both loaded by TorchServe:
- directory (the default): torch-model-archiver's "no-archive" layout. TorchServe serves it in place,
  whereas it unzips a .mar file into its temp dir at every start (a second copy of the weights on the
  node's disk, and time). Packaging is one kernel copy per file, hashed while it copies (or a hard
  link, for our own downloads). A source that the serving container mounts at the same path (a pvc://
  claim, mounted read-only in both containers) is not copied at all: each of its files is a symbolic
  link to the file in the claim, so packaging costs one hash. The claim's files must then stay as they
  are while the model serves (a new version goes to a new path), since TorchServe reads them at load.
- zip: one file, entries STORED (weights barely compress; deflating 500 MB costs ~100x a copy), for
  users who want a portable .mar.

torch-model-archiver supplies the manifest; the files are written here because the archiver's writer is
not reproducible (it stamps the creation time into the manifest, keeps mtimes, walks the directory in
filesystem order) and copies every file twice (into a temp dir, then into the archive).

The digest is BLAKE3, written `blake3:<hex>` (see `digests.py`). For a zip it is the BLAKE3 of the file.
For a directory it is the BLAKE3 of a listing with one line per file, `<blake3 hex of the file>  <path>\\n`
(path relative to the directory, '/'-separated), sorted by path as bytes; that is `b3sum`'s output, so
    (cd <name>.mar && find -L . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' b3sum) | b3sum
prints the hex (`-L`: a linked file counts with its content). Without `b3sum`, with the `blake3` package
(`pip install blake3`):
    python -c 'import blake3,pathlib,sys; d=pathlib.Path(sys.argv[1]); h=lambda b: blake3.blake3(b).hexdigest(); \\
      names=sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()); \\
      print("blake3:"+h("".join(f"{h(d.joinpath(n).read_bytes())}  {n}\\n" for n in names).encode()))' <name>.mar
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import zipfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .digests import blake3_of, blake3_of_bytes, labelled
from .errors import PackagingError, SpecField
from .sources import CHUNK_BYTES

MANIFEST_NAME = "MAR-INF/MANIFEST.json"
# The zip format's epoch; any fixed instant would do, this one is what reproducible builds use.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_MTIME = 315532800  # the same instant as a Unix time, for the directory layout's files
FIXED_CREATED_ON = "01/01/1980 00:00:00"
# Above this, a zip entry needs the zip64 extension (Java's ZipInputStream reads it).
ZIP64_THRESHOLD = (1 << 31) - 1
# Files at least this big are hashed on a second thread while the kernel copies them.
CONCURRENT_HASH_BYTES = 16 << 20


class ArchiveFormat(StrEnum):
    DIRECTORY = "directory"
    ZIP = "zip"


@dataclass(frozen=True)
class Entry:
    """One file of the archive: its name inside the archive and where its bytes come from."""

    name: str
    source: Path | bytes
    # The source file's BLAKE3 hex when it is already known (hashed while checking the user's sha256).
    known_blake3: str | None = None


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
    digest: str  # blake3:<hex>
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


def write_archive(
    spec: ModelSpec,
    files: list[Entry],
    destination: Path,
    archive_format: ArchiveFormat = ArchiveFormat.DIRECTORY,
    *,
    scratch: Path | None = None,
    in_place: Path | None = None,
) -> ArchiveDigest:
    """Write the files and their manifest as an archive at `destination`.

    In the directory layout, files under `scratch` (downloads that are deleted afterwards) may be
    hard-linked instead of copied, and files under `in_place` (a source the serving container mounts at
    the same path) are symbolic links to where they are.
    """
    entries = [*files, Entry(MANIFEST_NAME, manifest_json(spec))]
    return write_entries(entries, destination, archive_format, scratch=scratch, in_place=in_place)


def write_entries(
    entries: list[Entry],
    destination: Path,
    archive_format: ArchiveFormat,
    *,
    scratch: Path | None = None,
    in_place: Path | None = None,
) -> ArchiveDigest:
    """Write `entries` under a temporary name, then move the result to `destination`."""
    ordered = sorted(entries, key=lambda entry: entry.name)
    _refuse_duplicates(ordered)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        remove_path(partial)
        if archive_format is ArchiveFormat.ZIP:
            digest, size = _write_zip(ordered, partial)
        else:
            digest, size = _write_directory(ordered, partial, scratch, in_place)
        remove_path(destination)
        os.replace(partial, destination)
    except OSError as error:
        remove_path(partial)
        raise PackagingError(f"archive {destination}", f"cannot write ({error})", SpecField.MODEL_STORE) from error
    return ArchiveDigest(path=destination, digest=labelled(digest), size=size)


def directory_entries(directory: Path) -> list[Entry]:
    """Every file under `directory`, named by its path relative to it (a .mar directory read back)."""
    return [Entry(path.relative_to(directory).as_posix(), path) for path in directory.rglob("*") if path.is_file()]


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _refuse_duplicates(entries: list[Entry]) -> None:
    names = [entry.name for entry in entries]
    for previous, current in itertools.pairwise(names):
        if previous == current:
            raise PackagingError(
                f"archive file {current}",
                "two inputs would land on the same name in the archive",
                SpecField.EXTRA_FILES,
            )


# --- zip -----------------------------------------------------------------------------------------------


def _write_zip(entries: list[Entry], target: Path) -> tuple[str, int]:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for entry in entries:
            _add_to_zip(archive, entry)
    return blake3_of(target), target.stat().st_size


def _add_to_zip(archive: zipfile.ZipFile, entry: Entry) -> None:
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


# --- directory -----------------------------------------------------------------------------------------


class Placement(StrEnum):
    """How a file gets into a directory archive."""

    SYMLINK = "symlink"  # a source the serving container mounts at the same path: no bytes move
    HARD_LINK = "hard link"  # our own download, deleted after packaging: the link keeps it
    COPY = "copy"  # anything else (a kernel copy)


def placement_of(source: Path, scratch: Path | None, in_place: Path | None) -> Placement:
    resolved = source.resolve()
    if in_place is not None and resolved.is_relative_to(in_place.resolve()):
        return Placement.SYMLINK
    if scratch is not None and resolved.is_relative_to(scratch.resolve()):
        return Placement.HARD_LINK
    return Placement.COPY


def _write_directory(
    entries: list[Entry], target: Path, scratch: Path | None, in_place: Path | None
) -> tuple[str, int]:
    listing, total = [], 0
    for entry in entries:
        path = target / entry.name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry.source, bytes):
            path.write_bytes(entry.source)
            digest = blake3_of_bytes(entry.source)
        else:
            digest = place_and_hash(
                entry.source, path, scratch=scratch, in_place=in_place, known_blake3=entry.known_blake3
            )
        if not path.is_symlink():  # a link's target is the user's file: left as it is
            path.chmod(0o644)
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        listing.append(f"{digest}  {entry.name}\n")
        total += path.stat().st_size
    return blake3_of_bytes("".join(listing).encode()), total


def place_and_hash(
    source: Path,
    target: Path,
    *,
    scratch: Path | None = None,
    in_place: Path | None = None,
    known_blake3: str | None = None,
) -> str:
    """Put `source` at `target` as `placement_of` decides; its BLAKE3 hex (a `known_blake3` is not recomputed).

    A copied big file is hashed on this thread while another runs the copy: both release the GIL, so on
    two cores packaging takes about as long as the slower of the two (the copy) rather than their sum.
    The hash then stays on one core, leaving the other to the copy. A linked file is hashed on all cores.
    """
    placement = placement_of(source, scratch, in_place)
    if placement is Placement.SYMLINK:
        # The resolved path: the serving container resolves it through its own mount of the same claim.
        os.symlink(source.resolve(), target)
        return known_blake3 or blake3_of(source)
    if placement is Placement.HARD_LINK:
        try:
            os.link(source, target)
            return known_blake3 or blake3_of(source)
        except OSError:
            pass  # another filesystem, or links refused: copy instead
    if known_blake3 is not None or source.stat().st_size < CONCURRENT_HASH_BYTES:
        shutil.copyfile(source, target)
        return known_blake3 or blake3_of(source)
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            shutil.copyfile(source, target)
        except BaseException as error:  # re-raised on the calling thread below
            failure.append(error)

    copier = threading.Thread(target=copy, name="canaria-copy")
    copier.start()
    try:
        digest = blake3_of(source, all_cores=False)
    finally:
        copier.join()
    if failure:
        raise failure[0]
    return digest
