"""Train the CIFAR-10 example network briefly on generated images and save its state_dict.

Nothing outside the package registries can be downloaded here, so the images are generated: each class is a
flat colour from a fixed palette with per-pixel noise. A small CNN learns that in a few seconds, which is
enough to prove that a served model gives the right answer. The same seed gives the same weights.

    python examples/cifar10/train.py --out examples/cifar10/cifar10_net.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import Net  # the model file sits beside this script, as TorchServe wants it

IMAGE_SIZE = 32
# One distinct colour per class (RGB), far enough apart that noise does not blur them.
PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (128, 128, 0),
        (0, 0, 128),
    ],
    dtype=np.float32,
)
NOISE_STD = 20.0


def synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, 32, 32, 3) of the given classes: the class colour plus Gaussian noise."""
    base = PALETTE[labels][:, None, None, :]
    noise = rng.normal(0.0, NOISE_STD, size=(len(labels), IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW normalised with mean 0.5 / std 0.5, as the handler does."""
    scaled = torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2)
    return (scaled - 0.5) / 0.5


def generated_dataset(count: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = rng.integers(0, len(PALETTE), size=count)
    return to_model_input(synthetic_images(labels, rng)), torch.from_numpy(labels)


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predicted = model(inputs).argmax(dim=1)
    return float((predicted == labels).float().mean())


def train(seed: int = 0, steps: int = 300, batch_size: int = 32) -> Net:
    # One thread and deterministic kernels: the same seed gives bit-identical weights on any machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        inputs, labels = generated_dataset(batch_size, rng)
        optimizer.zero_grad()
        loss_fn(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cifar10_net.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    model = train(seed=args.seed, steps=args.steps)
    inputs, labels = generated_dataset(500, np.random.default_rng(args.seed + 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out} (held-out accuracy {accuracy(model, inputs, labels):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
