"""Packaging a 500 MB state_dict against copying the file; and what optimisation does to the example.

Two packagings: from a path that is copied into the archive (what a source given by hand gets), and in place
(`--source-in-place`: what a serving pod does with a pvc:// source, which both of its containers mount: the
archive links to the claim's files and packaging costs a hash).

    python bench/bench_packaging.py [--megabytes 500] [--runs 5] [--out FILE]  (results are kept in docs/benchmarks.md)

Every timing is the median of --runs alternating runs (copy, package, copy, package, ...), each into a
fresh destination on the same filesystem, with the source in the page cache for both. Packaging runs as
the init container does: `python -m canaria.package` in a new process, interpreter start-up included.
For the choice of archive format, torch-model-archiver's own formats are timed once each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "cifar10"))
import train  # noqa: E402  (examples/cifar10/train.py)


def machine_description() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    )  # fmt: skip
    memory_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))  # fmt: skip
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory_kib / 2**20:.1f} GiB memory, Python {platform.python_version()}, "
        f"load average {load} at {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def write_state_dict(path: Path, megabytes: int) -> None:
    """Random float32 tensors of 4 MiB each: incompressible, like trained weights."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(1024, 1024, generator=generator) for i in range(megabytes // 4)}
    torch.save(tensors, path)


def timed(action: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    started = time.perf_counter()
    action(*args, **kwargs)
    return time.perf_counter() - started


def copy_then_hash(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with source.open("rb") as stream:
        hashlib.file_digest(stream, "sha256")


def copy_then_blake3(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(source)
    hasher.hexdigest()


def blake3_only(source: Path, target: Path) -> None:
    """The hash an in-place archive needs, and an empty `target` for `measure` to remove."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(source)
    hasher.hexdigest()
    target.mkdir()


def package_command(source: Path, store: Path, archive_format: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "canaria.package", "--name", "big", "--version", "1", "--source", str(source),
        "--serialized-file", "weights.pt", "--handler", "json_tensor", "--model-store", str(store),
        "--archive-format", archive_format, *extra,
    ]  # fmt: skip


def archiver_command(source: Path, export: Path, archive_format: str) -> list[str]:
    return [
        str(Path(sys.executable).with_name("torch-model-archiver")), "--model-name", "big", "--version", "1",
        "--serialized-file", str(source / "weights.pt"), "--handler", "base_handler", "--export-path", str(export),
        "--archive-format", archive_format, "--force",
    ]  # fmt: skip


def fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with file.open("rb") as stream:
            os.fsync(stream.fileno())


def measure(operation: Callable[[Path], object], output: Path, durable: bool) -> float:
    """One timed run into a fresh `output`; with `durable`, until its bytes are on disk (fsync)."""
    os.sync()  # start with no dirty pages, so that one run's writeback does not slow the next
    started = time.perf_counter()
    operation(output)
    if durable:
        fsync_tree(output)
    elapsed = time.perf_counter() - started
    shutil.rmtree(output) if output.is_dir() else output.unlink()
    return elapsed


def bench_large_state_dict(work: Path, megabytes: int, runs: int) -> list[str]:
    source = work / "source"
    source.mkdir()
    weights = source / "weights.pt"
    write_state_dict(weights, megabytes)

    def package(archive_format: str, *extra: str) -> Callable[[Path], object]:
        def run(store: Path) -> None:
            subprocess.run(package_command(source, store, archive_format, *extra), check=True, capture_output=True)

        return run

    operations: dict[str, tuple[str, Callable[[Path], object]]] = {
        "copy": ("copy the file (`shutil.copyfile`, a kernel copy)", lambda out: shutil.copyfile(weights, out)),
        "cp": ("copy the file (`cp`)", lambda out: subprocess.run(["cp", str(weights), str(out)], check=True)),
        "copy+sha256": (
            "copy, then sha256 with hashlib (the least work that also yields a digest)",
            lambda out: copy_then_hash(weights, out),
        ),
        "copy+blake3": (
            "copy, then BLAKE3 on all cores (the least work that yields the packager's digest)",
            lambda out: copy_then_blake3(weights, out),
        ),
        "blake3": (
            "BLAKE3 of the file on all cores, no copy (the least work an in-place archive needs)",
            lambda out: blake3_only(weights, out),
        ),
        "in place": (
            "**`python -m canaria.package --source-in-place`** (a pvc:// source: links, no copy)",
            package("directory", "--source-in-place"),
        ),
        "directory": ("**`python -m canaria.package`** (directory layout, the default)", package("directory")),
        "zip": ("`python -m canaria.package --archive-format zip` (stored zip)", package("zip")),
    }
    cached: dict[str, list[float]] = {key: [] for key in operations}
    durable: dict[str, list[float]] = {key: [] for key in operations}
    for run in range(runs):  # interleaved, so that background load hits every operation alike
        for key, (_, operation) in operations.items():
            cached[key].append(measure(operation, work / f"out-{key}-{run}", durable=False))
            durable[key].append(measure(operation, work / f"out-{key}-{run}", durable=True))
    archiver = {}
    for archive_format in ("default", "zip-store", "no-archive"):
        export = work / f"archiver-{archive_format}"
        export.mkdir()
        command = archiver_command(source, export, archive_format)
        archiver[archive_format] = timed(subprocess.run, command, check=True, capture_output=True, cwd=work)
        shutil.rmtree(export)
    cached_s = {key: median(values) for key, values in cached.items()}
    durable_s = {key: median(values) for key, values in durable.items()}
    rows = [
        f"| {label} | {cached_s[key]:.3f} | {cached_s[key] / cached_s['copy']:.2f} | {durable_s[key]:.3f} | "
        f"{durable_s[key] / durable_s['copy']:.2f} |"
        for key, (label, _) in operations.items()
    ]
    rows += [
        f"| torch-model-archiver `--archive-format {name}`, once | {secs:.3f} | {secs / cached_s['copy']:.2f} | | |"
        for name, secs in archiver.items()
    ]
    return [
        f"### Packaging a {weights.stat().st_size / 1e6:.0f} MB state_dict ({runs} interleaved runs, medians)",
        "",
        "Page cache: the run ends when the bytes are written (to memory). Durable: when they are on disk (fsync).",
        "Each run starts after a `sync`. `python -m canaria.package` includes the interpreter's start-up.",
        "",
        "| what | page cache s | ratio to copy | durable s | ratio to copy |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Packaging a pvc:// source (in place) / copying: **{cached_s['in place'] / cached_s['copy']:.2f}** in the "
        f"page cache, **{durable_s['in place'] / durable_s['copy']:.2f}** durable (target <= 1.5). "
        f"Packaging a copied source / copying: **{cached_s['directory'] / cached_s['copy']:.2f}** in the page cache, "
        f"**{durable_s['directory'] / durable_s['copy']:.2f}** durable. "
        f"Packaging / (copy + BLAKE3): {cached_s['directory'] / cached_s['copy+blake3']:.2f} in the page cache.",
        "",
        "Every run (seconds), page cache: "
        + "; ".join(f"{key} {[round(v, 3) for v in values]}" for key, values in cached.items()),
        "",
        "Every run (seconds), durable: "
        + "; ".join(f"{key} {[round(v, 3) for v in values]}" for key, values in durable.items()),
    ]


def bench_optimisation(work: Path) -> list[str]:
    """Size and accuracy of the CIFAR-10 example, float against int8 / TorchScript, on its held-out digits."""
    source = work / "cifar10"
    source.mkdir()
    for name in ("model.py", "index_to_name.json", "model-config.yaml"):
        shutil.copyfile(ROOT / "examples" / "cifar10" / name, source / name)
    torch.save(train.train(seed=0).state_dict(), source / "cifar10_net.pt")
    held_out = train.held_out_digits()
    rows = []
    for label, flags in (
        ("float (state_dict)", []),
        ("TorchScript", ["--torchscript"]),
        ("int8 dynamic", ["--quantize", "int8"]),
    ):
        store = work / f"store-{len(rows)}"
        command = [
            sys.executable, "-m", "canaria.package", "--name", "cifar10", "--version", "1", "--source", str(source),
            "--serialized-file", "cifar10_net.pt", "--model-file", "model.py", "--handler", "image_classifier",
            "--model-store", str(store), *flags,
        ]  # fmt: skip
        summary = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        report = summary.get("optimization", {})
        if flags:
            model = torch.jit.load(str(next(Path(summary["archive"]).glob("*.torchscript.pt"))))
        else:
            model = train.Net()
            model.load_state_dict(torch.load(source / "cifar10_net.pt"))
            model.eval()
        weights = report.get("bytesAfter", (source / "cifar10_net.pt").stat().st_size)
        rows.append(
            f"| {label} | {weights / 1024:.1f} KiB | {summary['bytes'] / 1024:.1f} KiB | "
            f"{train.accuracy(model, held_out):.4f} | {report.get('top1Agreement', '-')} | "
            f"{report.get('maxAbsDiff', '-')} |"
        )
    return [
        f"### Optimisation of the CIFAR-10 example ({len(held_out.labels)} held-out handwritten digits)",
        "",
        "| model | weights | archive | accuracy | top-1 agreement with float (random inputs) | max abs logit diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Only the Linear layers are quantised (dynamic int8); the conv layers stay float.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canaria-bench-", dir=ROOT / "bench") as scratch:
        lines = [f"Machine: {machine_description()}", ""]
        lines += bench_large_state_dict(Path(scratch), args.megabytes, args.runs)
        print("\n".join(lines), flush=True)
        lines += ["", *bench_optimisation(Path(scratch))]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
