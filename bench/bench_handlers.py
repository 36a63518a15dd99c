"""Canaria's image_classifier against TorchServe's built-in one, and batching on against off.

    python bench/bench_handlers.py [--requests 640] [--rounds 12] [--clients 16] [--warmup 160] [--out FILE]

One TorchServe, one worker per model, the CIFAR-10 example's weights in every archive. Load: --clients
concurrent clients, each sending PNG images of held-out handwritten digits back to back over a kept-alive
connection; a phase is a fixed number of requests (--requests, split evenly over the clients), so every
phase does the same work and its throughput is requests / wall time. Each model first gets --warmup
requests that are not measured. Phases alternate (A B, B A, A B, ...) so that neither side always goes
first and background load hits both alike; each round gives one throughput per side and one ratio.

Significance: the 95% bootstrap confidence interval of the median per-round ratio (rounds are paired,
back to back), and a two-sided Mann-Whitney U test of the two sides' per-round throughputs.

TorchServe's built-in image_classifier resizes to 256 and crops 224 (ImageNet), which a 32x32 CIFAR-10
network cannot take; its documented way to serve another input size is a subclass that replaces
`image_processing` (as TorchServe's MNIST example does). That subclass, and nothing else, is the built-in
side here; it needs torchvision and captum, which TorchServe's vision handlers import.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "cifar10"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402  (examples/cifar10/train.py)
from bench_packaging import machine_description  # noqa: E402
from stats import bootstrap_ci, mann_whitney, percentile, spread  # noqa: E402

from tests.support.torchserve import ModelSettings, running_torchserve  # noqa: E402

BUILTIN_SUBCLASS = '''"""TorchServe's built-in ImageClassifier with CIFAR-10's 32x32 input instead of ImageNet's 224."""
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class CifarImageClassifier(ImageClassifier):
    topk = 3
    image_processing = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])]
    )
'''


@dataclass
class PhaseResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def png_images(count: int) -> list[bytes]:
    """The first count held-out digits (images training never saw), as the PNGs a client sends."""
    images = train.held_out_digits().images[:count]
    encoded = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def run_load(url: str, bodies: list[bytes], clients: int, total: int) -> PhaseResult:
    """total requests (rounded up to a multiple of clients), each client sending its share back to back."""
    per_client = -(-total // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    sessions = [requests.Session() for _ in range(clients)]  # connected before the clock starts
    start_gate = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start_gate.wait()
        for sent in range(index, index + per_client * clients, clients):
            began = time.perf_counter()
            response = sessions[index].post(url, data=bodies[sent % len(bodies)], timeout=60)
            latencies[index].append((time.perf_counter() - began) * 1000)
            errors[index] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for session in sessions:
        session.close()
    flat = [value for per_client in latencies for value in per_client]
    return PhaseResult(len(flat), sum(errors), elapsed, flat)


def merge(results: list[PhaseResult]) -> PhaseResult:
    return PhaseResult(
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        sum(r.seconds for r in results),
        [v for r in results for v in r.latencies_ms],
    )


def package(source: Path, store: Path, name: str, handler: str) -> None:
    command = [
        sys.executable, "-m", "canaria.package", "--name", name, "--version", "1.0", "--source", str(source),
        "--serialized-file", "cifar10_net.pt", "--model-file", "model.py", "--handler", handler,
        "--extra-files", "index_to_name.json", "--model-store", str(store),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


@dataclass
class Comparison:
    rounds: list[tuple[PhaseResult, PhaseResult]]

    @property
    def first(self) -> PhaseResult:
        return merge([first for first, _ in self.rounds])

    @property
    def second(self) -> PhaseResult:
        return merge([second for _, second in self.rounds])

    @property
    def throughput_ratios(self) -> list[float]:
        return [first.throughput / second.throughput for first, second in self.rounds]

    def verdict(self) -> str:
        """The spread of each side, the ratio with its confidence interval, and whether it is significant."""
        first = [r.throughput for r, _ in self.rounds]
        second = [r.throughput for _, r in self.rounds]
        ratios = self.throughput_ratios
        low, high = bootstrap_ci(ratios)
        test = mann_whitney(first, second)
        significant = (low > 1 or high < 1) and test.p_value < 0.05
        return (
            f"Per-round requests/s, min / median / max: {spread(first)} against {spread(second)}. "
            f"Median per-round ratio **{statistics.median(ratios):.2f}**, 95% bootstrap CI {low:.2f} to {high:.2f} "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); Mann-Whitney U on the per-round throughputs: "
            f"p = {test.p_value:.2g}. The difference is "
            + ("**significant** at the 5% level." if significant else "**not significant** at the 5% level.")
        )


def compare(server: Any, names: tuple[str, str], bodies: list[bytes], args: argparse.Namespace) -> Comparison:
    """Alternate phases of the two models, back to back, so that background load hits both alike."""
    for name in names:  # warm-up: first requests pay for lazy initialisation and JIT paths
        run_load(f"{server.inference_url}/predictions/{name}", bodies, args.clients, args.warmup)
    rounds: list[tuple[PhaseResult, PhaseResult]] = []
    for index in range(args.rounds):
        order = names if index % 2 == 0 else names[::-1]  # neither side always goes first
        phase = {name: run_load(f"{server.inference_url}/predictions/{name}", bodies, args.clients, args.requests)
                 for name in order}  # fmt: skip
        rounds.append((phase[names[0]], phase[names[1]]))
    return Comparison(rounds)


def row(label: str, result: PhaseResult) -> str:
    return (
        f"| {label} | {result.throughput:.1f} | {percentile(result.latencies_ms, 0.5):.1f} | "
        f"{percentile(result.latencies_ms, 0.99):.1f} | {result.requests} | {result.errors} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=640, help="requests per side per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=160, help="unmeasured requests per model first")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    machine_before = machine_description()
    with tempfile.TemporaryDirectory(prefix="canaria-bench-") as scratch:
        work = Path(scratch)
        source, store = work / "source", work / "store"
        source.mkdir()
        for name in ("model.py", "index_to_name.json", "model-config.yaml"):
            shutil.copyfile(ROOT / "examples" / "cifar10" / name, source / name)
        (source / "ts_builtin_cifar.py").write_text(BUILTIN_SUBCLASS)
        torch.save(train.train(seed=0).state_dict(), source / "cifar10_net.pt")
        package(source, store, "canaria", "image_classifier")
        package(source, store, "builtin", "ts_builtin_cifar.py")
        package(source, store, "canaria-b8", "image_classifier")
        bodies = png_images(64)
        with running_torchserve(store, ModelSettings("canaria", "1.0"), work / "ts", model_api=True) as server:
            server.wait_until_ready("canaria")
            server.register("builtin.mar")
            server.register("canaria-b8.mar", batch_size=8, max_batch_delay_ms=5)
            handlers = compare(server, ("canaria", "builtin"), bodies, args)
            batching = compare(server, ("canaria-b8", "canaria"), bodies, args)
    ours, builtin = handlers.first, handlers.second
    per_side = -(-args.requests // args.clients) * args.clients
    batched, unbatched = batching.first, batching.second
    lines = [
        f"Machine: {machine_before}; after: load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()),
        "",
        f"### Handlers: {args.clients} concurrent clients, PNG 32x32, one worker, {args.rounds} alternating rounds "
        f"of {per_side} requests per side after {args.warmup} warm-up requests",
        "",
        "| handler (batchSize 1) | requests/s | p50 ms | p99 ms | requests | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        row("Canaria `image_classifier`", ours),
        row("TorchServe built-in `image_classifier` (32x32 subclass)", builtin),
        "",
        f"Throughput ratio Canaria / built-in, pooled: {ours.throughput / builtin.throughput:.2f} (target >= 1.0); "
        f"p50 latency ratio {percentile(ours.latencies_ms, 0.5) / percentile(builtin.latencies_ms, 0.5):.2f}, "
        f"p99 ratio {percentile(ours.latencies_ms, 0.99) / percentile(builtin.latencies_ms, 0.99):.2f} "
        "(lower is better).",
        "",
        handlers.verdict(),
        "",
        "### Batching: Canaria `image_classifier`, same load",
        "",
        "| batching | requests/s | p50 ms | p99 ms | requests | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        row("batchSize 1", unbatched),
        row("batchSize 8, maxBatchDelay 5 ms", batched),
        "",
        f"Throughput ratio batchSize 8 / batchSize 1, pooled: {batched.throughput / unbatched.throughput:.2f}.",
        "",
        batching.verdict(),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
