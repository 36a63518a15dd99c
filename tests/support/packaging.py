"""Run the packager the way the init container does, and build small model sources for it."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from canaria.package.cli import main


@dataclass(frozen=True)
class PackagerRun:
    exit_code: int
    stdout: str
    stderr: str
    termination_message: str | None

    @property
    def summary(self) -> dict[str, Any]:
        assert self.exit_code == 0, self.stderr
        summary: dict[str, Any] = json.loads(self.stdout)
        return summary


def run_packager_in_process(args: list[str], termination_log: Path) -> PackagerRun:
    """`python -m canaria.package ARGS`, in this process (fast), with stdout and stderr captured."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*args, "--termination-log", str(termination_log)])
    message = termination_log.read_text() if termination_log.exists() else None
    return PackagerRun(code, stdout.getvalue(), stderr.getvalue(), message)


def archive_files(archive: Path) -> dict[str, bytes]:
    """Every file of an archive in either layout (a .mar directory or a .mar zip), by name."""
    if archive.is_dir():
        return {
            path.relative_to(archive).as_posix(): path.read_bytes() for path in archive.rglob("*") if path.is_file()
        }
    with zipfile.ZipFile(archive) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def recomputed_digest(archive: Path) -> str:
    """The archive's digest recomputed here, with the blake3 package, from the documented recipe:
    BLAKE3 of a .mar file; for a .mar directory, BLAKE3 of the sorted `<blake3 hex>  <path>\\n` listing."""
    if archive.is_file():
        return "blake3:" + blake3.blake3(archive.read_bytes()).hexdigest()
    listing = "".join(
        f"{blake3.blake3(data).hexdigest()}  {name}\n" for name, data in sorted(archive_files(archive).items())
    )
    return "blake3:" + blake3.blake3(listing.encode()).hexdigest()


def write_model_source(directory: Path, weights: bytes = b"\x00weights\x01" * 1000) -> Path:
    """A model source with no torch in it: packaging only moves bytes, so any bytes will do."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.pt").write_bytes(weights)
    (directory / "model.py").write_text("class Net:\n    pass\n")
    (directory / "index_to_name.json").write_text('{"0": "zero", "1": "one"}\n')
    (directory / "my_handler.py").write_text("def handle(data, context):\n    return data\n")
    (directory / "requirements.txt").write_text("numpy\n")
    return directory


def package_args(source: Path | str, model_store: Path, *extra: str, name: str = "m") -> list[str]:
    return [
        "--name", name, "--version", "1.0", "--source", str(source), "--serialized-file", "weights.pt",
        "--model-file", "model.py", "--handler", "image_classifier", "--extra-files", "index_to_name.json",
        "--model-store", str(model_store), *extra,
    ]  # fmt: skip
