"""`python -m canaria.package`: the serving pod's init container, also usable by hand.

On success it prints one JSON line on stdout: {"archive": ..., "digest": "blake3:...", "bytes": ...,
"seconds": ...}; the same digest is in `<model-store>/<name>.digest`, and the termination log gets the line
{"digest": "blake3:...", "bytes": ...}, which the pod's status carries to the operator (status.modelDigest).
On failure it exits non-zero and writes one line, to stderr and to the termination log, naming the
ModelDeployment field to fix; the operator copies that line into the ModelDeployment's status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from canaria.schema import BUILTIN_HANDLERS

from .archive import ArchiveFormat
from .build import PackageRequest, package
from .errors import PackagingError
from .optimize import QUANTIZE_CHOICES, Optimization

KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")
EXIT_PACKAGING_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL_ERROR = 3


class UsageError(Exception):
    """The command line itself is wrong: the operator rendered it, so this is an operator bug."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m canaria.package", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="model name (the archive is <name>.mar)")
    parser.add_argument("--version", required=True, help="model version written into the manifest")
    parser.add_argument("--source", required=True, help="http(s)://..., s3://bucket/prefix, a path, or a .mar")
    parser.add_argument(
        "--sha256", help="expected sha256 of a single-file source or a .mar (checked; the archive's digest is BLAKE3)"
    )
    parser.add_argument("--serialized-file", help="weights (state_dict or TorchScript), relative to the source")
    parser.add_argument("--model-file", help="Python file defining the model class, relative to the source")
    parser.add_argument(
        "--handler",
        help=f"built-in ({', '.join(BUILTIN_HANDLERS)}) or a .py in the source; not for a prebuilt .mar",
    )
    parser.add_argument("--extra-files", default="", help="comma-separated paths relative to the source")
    parser.add_argument("--requirements", help="requirements.txt relative to the source")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none")
    parser.add_argument("--torchscript", action="store_true", help="export the model as TorchScript")
    parser.add_argument(
        "--archive-format",
        choices=[choice.value for choice in ArchiveFormat],
        default=ArchiveFormat.DIRECTORY.value,
        help="directory: served in place, no unzip at start (default); zip: one portable .mar file",
    )
    parser.add_argument(
        "--source-in-place",
        action="store_true",
        help="the serving container mounts the source (a path) at the same path, read-only: the directory "
        "archive links to its files instead of copying them (they must not change while the model serves)",
    )
    parser.add_argument("--model-store", required=True, type=Path)
    parser.add_argument("--config", type=Path, help="TorchServe config.properties to copy into the model store")
    parser.add_argument("--termination-log", type=Path, default=_default_termination_log())
    return parser


def request_from_args(args: argparse.Namespace) -> PackageRequest:
    return PackageRequest(
        name=args.name,
        version=args.version,
        source=args.source,
        handler=args.handler,
        model_store=args.model_store,
        sha256=args.sha256,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=tuple(item.strip() for item in args.extra_files.split(",") if item.strip()),
        requirements=args.requirements,
        optimization=Optimization(quantize=args.quantize, torchscript=args.torchscript),
        config=args.config,
        archive_format=ArchiveFormat(args.archive_format),
        source_in_place=args.source_in_place,
    )


def main(argv: Sequence[str] | None = None) -> int:
    termination_log = _termination_log_from(argv)
    started = time.monotonic()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.source_in_place and args.archive_format == ArchiveFormat.ZIP:
            parser.error("--source-in-place links files into a directory archive: not with --archive-format zip")
        result = package(request_from_args(args))
    except UsageError as error:
        return _fail(f"canaria-package: usage: {error} (an operator bug: report it)", termination_log, EXIT_USAGE)
    except PackagingError as error:
        return _fail(error.line(), termination_log, EXIT_PACKAGING_FAILED)
    except Exception as error:  # one clear line beats a traceback the operator cannot show
        line = f"canaria-package: internal error: {type(error).__name__}: {error} (a Canaria bug: please report it)"
        return _fail(" ".join(line.split()), termination_log, EXIT_INTERNAL_ERROR)
    summary = {**result.summary(), "seconds": round(time.monotonic() - started, 3)}
    print(json.dumps(summary, sort_keys=True), flush=True)
    # Short and fixed in size: kubelet keeps at most 4096 bytes of a termination message.
    _write_termination_log(termination_log, json.dumps({"digest": result.digest, "bytes": result.size}))
    return 0


def _fail(line: str, termination_log: Path | None, code: int) -> int:
    print(line, file=sys.stderr, flush=True)
    # stderr has the line too; without a termination log kubelet shows the log's tail.
    _write_termination_log(termination_log, line)
    return code


def _write_termination_log(termination_log: Path | None, line: str) -> None:
    if termination_log is not None:
        with contextlib.suppress(OSError):
            termination_log.write_text(line + "\n")


def _default_termination_log() -> Path | None:
    # Kubernetes mounts this file into every container; elsewhere /dev must not gain a stray file.
    log = KUBERNETES_TERMINATION_LOG
    return log if log.is_file() and os.access(log, os.W_OK) else None


def _termination_log_from(argv: Sequence[str] | None) -> Path | None:
    """The termination log is needed even when the rest of the command line does not parse."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--termination-log", type=Path, default=_default_termination_log())
    known, _ = probe.parse_known_args(argv)
    log: Path | None = known.termination_log
    return log
