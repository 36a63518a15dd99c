"""Image classification for CNNs: PNG/JPEG bytes or JSON tensors in, top-k labels with probabilities out.

Input, per request: raw image bytes (any format Pillow reads), a base64 string of them, or JSON: one
tensor ([C, H, W], already normalised), {"data": tensor} or {"instances": [tensor, ...]}.
Output: {"label": probability, ...} for the top k classes, most probable first; with "instances",
{"predictions": [...]}. Labels come from index_to_name.json in the archive (an extra file), else indices.

Settings (model-config.yaml, `handler:` section): image_size (int or [h, w]; default 32), mean and std
per channel (default 0.5: the CIFAR-10 tutorial's normalisation), topk (default 5).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

if __package__:  # imported from the model_handlers package (tests, tools)
    from .canaria_base import BadRequest, CanariaHandler, Decoded, decode_base64, json_samples, parse_json, top_k_labels
else:  # imported by TorchServe from the unpacked archive, where both files sit side by side
    from canaria_base import BadRequest, CanariaHandler, Decoded, decode_base64, json_samples, parse_json, top_k_labels

IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


class ImageClassifier(CanariaHandler):
    def configure(self, config: dict[str, Any]) -> None:
        size = config.get("image_size", 32)
        self.height, self.width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.mean = torch.tensor(config.get("mean", [0.5, 0.5, 0.5]), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(config.get("std", [0.5, 0.5, 0.5]), dtype=torch.float32).view(-1, 1, 1)
        self.topk = int(config.get("topk", 5))
        self.sample_shape = (len(self.mean), self.height, self.width)

    def decode(self, body: Any, index: int) -> Decoded:
        if isinstance(body, (bytes, bytearray)) and bytes(body[:4]).startswith(IMAGE_MAGIC):
            return Decoded(self.image_tensor(bytes(body)).unsqueeze(0))
        if isinstance(body, str) and not body.lstrip().startswith(("[", "{")):
            return Decoded(self.image_tensor(decode_base64(body.strip())).unsqueeze(0))
        try:
            payload = parse_json(body)
        except ValueError as error:
            raise BadRequest("expected image bytes (PNG, JPEG, ...) or a JSON tensor") from error
        return json_samples(payload, torch.float32, self.sample_shape)

    def image_tensor(self, data: bytes) -> torch.Tensor:
        """Decode, convert to RGB, resize to the model's input size, scale to [0, 1] and normalise."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise BadRequest(f"not a readable image: {error}") from error
        if rgb.size != (self.width, self.height):
            rgb = rgb.resize((self.width, self.height), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
        return (pixels - self.mean) / self.std

    def encode(self, output: torch.Tensor) -> dict[str, float]:
        return top_k_labels(output, self.topk, self.mapping)
