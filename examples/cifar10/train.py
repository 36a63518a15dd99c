"""Train the CIFAR-10 example network on scikit-learn's handwritten digits and save its state_dict.

The images are real: the 1,797 handwritten digits (8x8, 17 grey levels) that scikit-learn ships inside its
package, so nothing is downloaded. Each is scaled to 0-255, made RGB and resized to the network's 32x32 with
Pillow's bilinear filter, exactly what the image_classifier handler does to a small grey PNG it receives.
A fixed, stratified 80/20 split keeps 360 images that training never sees; accuracy is measured on them.
One thread, deterministic kernels and a seed: the same seed gives the same weights.

    python examples/cifar10/train.py --out examples/cifar10/cifar10_net.pt [--samples DIR]

--samples DIR also writes the first held-out image of each digit as DIR/<digit>.png, to send to the server.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import Net  # the model file sits beside this script, as TorchServe wants it

IMAGE_SIZE = 32
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0  # fixed apart from the training seed, so that "held out" always names the same images


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # uint8 (N, 32, 32, 3): what a client would send as a PNG
    labels: np.ndarray  # int64 (N,): the digit drawn


def upscaled(digit: np.ndarray) -> np.ndarray:
    """One 8x8 digit (0-16, ink high) -> uint8 32x32x3, by the handler's own conversion and resize."""
    grey = Image.fromarray(np.round(digit * (255.0 / 16.0)).astype(np.uint8), mode="L")
    rgb = grey.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


@functools.cache
def split_digits() -> tuple[Digits, Digits]:
    """(training, held-out): scikit-learn's digits upscaled, split 80/20 with every class in proportion."""
    digits = load_digits()
    images = np.stack([upscaled(digit) for digit in digits.images])
    labels = digits.target.astype(np.int64)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, labels, test_size=HELD_OUT_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return Digits(train_images, train_labels), Digits(test_images, test_labels)


def held_out_digits() -> Digits:
    """The images training never sees, for measuring accuracy and for the tests, demo and benchmarks."""
    return split_digits()[1]


def first_of_each_class(digits: Digits) -> Digits:
    """The first image of each digit 0-9, in digit order."""
    indexes = [int(np.flatnonzero(digits.labels == label)[0]) for label in range(10)]
    return Digits(digits.images[indexes], digits.labels[indexes])


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW normalised with mean 0.5 / std 0.5, as the handler does."""
    scaled = torch.from_numpy(images).float().div(255.0).permute(0, 3, 1, 2)
    return (scaled - 0.5) / 0.5


def predictions(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(to_model_input(images)).argmax(dim=1).numpy()


def accuracy(model: nn.Module, digits: Digits) -> float:
    return float(np.mean(predictions(model, digits.images) == digits.labels))


def per_class_accuracy(model: nn.Module, digits: Digits) -> list[float]:
    correct = predictions(model, digits.images) == digits.labels
    return [float(np.mean(correct[digits.labels == label])) for label in range(10)]


def train(seed: int = 0, epochs: int = 8, batch_size: int = 32) -> Net:
    # One thread and deterministic kernels: the same seed gives bit-identical weights on any machine.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    training = split_digits()[0]
    inputs, labels = to_model_input(training.images), torch.from_numpy(training.labels)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(labels)), len(labels) // batch_size):
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cifar10_net.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=Path, help="write the first held-out image of each digit here as PNG")
    args = parser.parse_args(argv)
    model = train(seed=args.seed, epochs=args.epochs)
    held_out = held_out_digits()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    per_class = " ".join(f"{label}:{value:.2f}" for label, value in enumerate(per_class_accuracy(model, held_out)))
    print(f"saved {args.out}")
    print(f"held-out accuracy {accuracy(model, held_out):.4f} on {len(held_out.labels)} digits; per digit {per_class}")
    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        samples = first_of_each_class(held_out)
        for image, label in zip(samples.images, samples.labels, strict=True):
            Image.fromarray(image).save(args.samples / f"{label}.png")
        print(f"wrote {args.samples}/0.png ... 9.png (held-out digits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
