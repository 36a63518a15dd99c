"""The archive canaria.package writes: reproducible bytes, TorchServe's layout, digest and config files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import blake3
import pytest

import canaria.package.archive
from canaria import status
from tests.support.packaging import (
    archive_files,
    package_args,
    recomputed_digest,
    run_packager_in_process,
    write_model_source,
)

FORMATS = ["directory", "zip"]


def package(tmp_path: Path, source: Path, store_name: str, *extra: str) -> Path:
    store = tmp_path / store_name
    run = run_packager_in_process(package_args(source, store, *extra), tmp_path / f"{store_name}.log")
    assert run.exit_code == 0, run.stderr
    return store / "m.mar"


@pytest.mark.parametrize("archive_format", FORMATS)
def test_same_inputs_give_identical_archives_and_one_digest(tmp_path: Path, archive_format: str) -> None:
    first_source = write_model_source(tmp_path / "a")
    first = package(tmp_path, first_source, "store1", "--archive-format", archive_format)
    # Same content elsewhere, written later, with other timestamps and permissions.
    second_source = tmp_path / "elsewhere" / "b"
    shutil.copytree(first_source, second_source)
    for path in second_source.iterdir():
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.chmod(0o600)
    second = package(tmp_path, second_source, "store2", "--archive-format", archive_format)
    assert archive_files(first) == archive_files(second)
    if archive_format == "zip":
        assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "store1" / "m.digest").read_text() == (tmp_path / "store2" / "m.digest").read_text()
    assert (tmp_path / "store1" / "m.digest").read_text() == f"{recomputed_digest(first)}  m.mar\n"


@pytest.mark.parametrize("archive_format", FORMATS)
def test_changed_weights_change_the_digest(tmp_path: Path, archive_format: str) -> None:
    flags = ("--archive-format", archive_format)
    package(tmp_path, write_model_source(tmp_path / "a"), "store1", *flags)
    package(tmp_path, write_model_source(tmp_path / "b", weights=b"other weights"), "store2", *flags)
    assert (tmp_path / "store1" / "m.digest").read_text() != (tmp_path / "store2" / "m.digest").read_text()


def test_zip_archive_has_torchserve_layout_stored_entries_and_fixed_times(tmp_path: Path) -> None:
    archive = package(tmp_path, write_model_source(tmp_path / "src"), "store", "--archive-format", "zip")
    with zipfile.ZipFile(archive) as opened:
        infos = opened.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert set(names) == EXPECTED_NAMES
    assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert_manifest(json.loads(archive_files(archive)["MAR-INF/MANIFEST.json"]))


def test_directory_archive_is_the_same_files_with_the_documented_digest(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "src")
    archive = package(tmp_path, source, "store")
    assert archive.is_dir()
    files = archive_files(archive)
    assert set(files) == EXPECTED_NAMES
    assert files["weights.pt"] == (source / "weights.pt").read_bytes()
    assert (source / "weights.pt").stat().st_nlink == 1, "a user's file is copied, never linked"
    assert {(archive / name).stat().st_mtime for name in files} == {315532800}
    assert_manifest(json.loads(files["MAR-INF/MANIFEST.json"]))
    # The one-liner from the module docstring, run as a user would paste it into a shell.
    doc = canaria.package.archive.__doc__ or ""
    lines = doc[doc.index("    python -c") :].splitlines()[:3]
    command = "\n".join(line.strip() for line in lines).replace("python -c", f"{sys.executable} -c", 1)
    recomputed = subprocess.run(
        command.replace("<name>.mar", "m.mar"),
        shell=True, executable="/bin/bash", cwd=archive.parent, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert recomputed.startswith("blake3:") and recomputed == recomputed_digest(archive)
    assert (tmp_path / "store" / "m.digest").read_text() == f"{recomputed}  m.mar\n"


def test_a_big_file_is_copied_and_hashed_correctly(tmp_path: Path) -> None:
    weights = os.urandom(20 << 20)  # above the size that is hashed on a second thread
    archive = package(tmp_path, write_model_source(tmp_path / "src", weights=weights), "store")
    assert (archive / "weights.pt").read_bytes() == weights
    listing = "".join(
        f"{blake3.blake3(data).hexdigest()}  {name}\n" for name, data in sorted(archive_files(archive).items())
    )
    assert listing.count("\n") == len(EXPECTED_NAMES)
    expected = "blake3:" + blake3.blake3(listing.encode()).hexdigest()
    assert (tmp_path / "store" / "m.digest").read_text().split()[0] == expected


def test_repackaging_replaces_the_archive_in_either_layout(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "src")
    package(tmp_path, source, "store", "--archive-format", "zip")
    archive = package(tmp_path, source, "store")
    assert archive.is_dir()
    assert package(tmp_path, source, "store", "--archive-format", "zip").is_file()
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == ["m.digest", "m.mar"]


EXPECTED_NAMES = {
    "MAR-INF/MANIFEST.json", "canaria_base.py", "image_classifier.py", "index_to_name.json", "model.py", "weights.pt",
}  # fmt: skip


def assert_manifest(manifest: dict[str, object]) -> None:
    assert manifest["model"] == {
        "modelName": "m",
        "modelVersion": "1.0",
        "handler": "image_classifier.py",
        "serializedFile": "weights.pt",
        "modelFile": "model.py",
    }
    assert manifest["createdOn"] == "01/01/1980 00:00:00"
    assert manifest["runtime"] == "python"


def test_summary_digest_file_and_config_copy(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "src")
    config = tmp_path / "config.properties"
    config.write_text("metrics_mode=prometheus\n")
    store = tmp_path / "store"
    args = package_args(source, store, "--config", str(config), "--archive-format", "zip")
    run = run_packager_in_process(args, tmp_path / "log")
    digest = "blake3:" + blake3.blake3((store / "m.mar").read_bytes()).hexdigest()
    assert run.summary["digest"] == digest
    assert "sha256" not in run.summary
    assert run.summary["bytes"] == (store / "m.mar").stat().st_size
    assert run.summary["archive"] == str(store / "m.mar")
    assert (store / "m.digest").read_text() == f"{digest}  m.mar\n"
    assert (store / "config.properties").read_text() == "metrics_mode=prometheus\n"
    assert sorted(path.name for path in store.iterdir()) == ["config.properties", "m.digest", "m.mar"]
    assert run.stderr == ""


def test_custom_handler_requirements_extra_directories_and_model_config(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "src")
    (source / "assets" / "vocab").mkdir(parents=True)
    (source / "assets" / "vocab" / "words.txt").write_text("a\nb\n")
    (source / "assets" / "top.txt").write_text("top\n")
    (source / "model-config.yaml").write_text("handler:\n  topk: 2\n")
    args = package_args(source, tmp_path / "store", "--requirements", "requirements.txt")
    args[args.index("--handler") + 1] = "my_handler.py:handle"
    args[args.index("--extra-files") + 1] = "index_to_name.json,assets,*.json"
    run = run_packager_in_process(args, tmp_path / "log")
    assert run.exit_code != 0, "index_to_name.json twice (listed and matched by *.json) must be refused"
    assert "same name in the archive" in run.stderr
    args[args.index("--extra-files") + 1] = "index_to_name.json,assets"
    run = run_packager_in_process(args, tmp_path / "log")
    files = archive_files(Path(run.summary["archive"]))
    names = set(files)
    model = json.loads(files["MAR-INF/MANIFEST.json"])["model"]
    assert {"my_handler.py", "requirements.txt", "model-config.yaml", "top.txt", "vocab/words.txt"} <= names
    assert "canaria_base.py" not in names
    assert model["handler"] == "my_handler.py:handle"
    assert model["requirementsFile"] == "requirements.txt"
    assert model["configFile"] == "model-config.yaml"


def test_prebuilt_archive_is_installed_byte_for_byte(tmp_path: Path) -> None:
    built = package(tmp_path, write_model_source(tmp_path / "src"), "first", "--archive-format", "zip")
    store = tmp_path / "store"
    args = ["--name", "m", "--version", "1.0", "--source", str(built), "--model-store", str(store)]
    run = run_packager_in_process(args, tmp_path / "log")
    assert (store / "m.mar").read_bytes() == built.read_bytes()
    assert run.summary["digest"] == "blake3:" + blake3.blake3(built.read_bytes()).hexdigest()


def test_packaging_does_not_import_torch(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "src")
    probe = (
        "import sys\n"
        "from canaria.package.cli import main\n"
        f"code = main({package_args(source, tmp_path / 'store')!r})\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ts', 'numpy')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_prebuilt_directory_archive_is_installed_file_for_file(tmp_path: Path) -> None:
    built = package(tmp_path, write_model_source(tmp_path / "src"), "first")  # a .mar directory
    store = tmp_path / "store"
    args = ["--name", "m", "--version", "1.0", "--source", str(built), "--model-store", str(store)]
    run = run_packager_in_process(args, tmp_path / "log")
    assert archive_files(store / "m.mar") == archive_files(built)
    assert (store / "m.digest").read_text() == (tmp_path / "first" / "m.digest").read_text()
    assert run.summary["digest"] == (store / "m.digest").read_text().split()[0] == recomputed_digest(store / "m.mar")


def test_success_leaves_the_digest_in_the_termination_message_for_the_operator(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = run_packager_in_process(package_args(write_model_source(tmp_path / "src"), store), tmp_path / "log")
    assert run.termination_message is not None and len(run.termination_message.encode()) < 4096
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [
                {"name": "package", "state": {"terminated": {"exitCode": 0, "message": run.termination_message}}}
            ]
        },
    }
    assert status.archive_digest(pod) == run.summary["digest"] == recomputed_digest(store / "m.mar")


def test_a_source_in_place_is_linked_not_copied_and_keeps_the_digest(tmp_path: Path) -> None:
    source = write_model_source(tmp_path / "claim" / "m", weights=os.urandom(20 << 20))
    copied = package(tmp_path, source, "copied")
    linked = package(tmp_path, source, "linked", "--source-in-place")
    weights = linked / "weights.pt"
    assert weights.is_symlink() and os.readlink(weights) == str((source / "weights.pt").resolve())
    assert weights.stat().st_ino == (source / "weights.pt").stat().st_ino  # the claim's file itself
    assert weights.lstat().st_size < 4096, "a link, not 20 MiB of weights"
    from_source = {"weights.pt", "model.py", "index_to_name.json"}
    assert {name for name in EXPECTED_NAMES if (linked / name).is_symlink()} == from_source  # handler: copied
    assert archive_files(linked) == archive_files(copied)
    digest = (tmp_path / "linked" / "m.digest").read_text()
    assert digest == (tmp_path / "copied" / "m.digest").read_text() == f"{recomputed_digest(linked)}  m.mar\n"
    (source / "weights.pt").write_bytes(b"other weights")  # what the digest names is what the link serves
    assert f"{recomputed_digest(linked)}  m.mar\n" != digest


def test_the_documented_find_lists_linked_files_too(tmp_path: Path) -> None:
    archive = package(tmp_path, write_model_source(tmp_path / "src"), "store", "--source-in-place")
    doc = canaria.package.archive.__doc__ or ""
    recipe = doc[doc.index("(cd <name>.mar && find") :].splitlines()[0]
    listing = recipe[len("(cd <name>.mar && ") : recipe.index(" | xargs")]  # b3sum is not installed here
    result = subprocess.run(listing, shell=True, cwd=archive, text=True, capture_output=True, check=True)
    assert result.stdout.splitlines() == sorted(EXPECTED_NAMES) and (archive / "weights.pt").is_symlink()


def test_a_prebuilt_directory_archive_in_place_is_linked_file_for_file(tmp_path: Path) -> None:
    built = package(tmp_path, write_model_source(tmp_path / "src"), "first")
    store = tmp_path / "store"
    args = ["--name", "m", "--version", "1.0", "--source", str(built), "--model-store", str(store), "--source-in-place"]
    run = run_packager_in_process(args, tmp_path / "log")
    assert all((store / "m.mar" / name).is_symlink() for name in EXPECTED_NAMES)
    assert run.summary["digest"] == (tmp_path / "first" / "m.digest").read_text().split()[0]


def test_in_place_is_for_the_directory_layout_only(tmp_path: Path) -> None:
    args = package_args(write_model_source(tmp_path / "src"), tmp_path / "store", "--source-in-place")
    run = run_packager_in_process([*args, "--archive-format", "zip"], tmp_path / "log")
    assert run.exit_code == 2 and "not with --archive-format zip" in run.stderr
