"""A generic handler for models that take and return tensors as JSON.

Input, per request: one tensor as a nested list, {"data": tensor}, or {"instances": [tensor, ...]}.
Output depends on `task` (model-config.yaml, `handler:` section):
  raw (default)    the output row as a nested list
  regression       like raw, but a single-value row becomes a number
  classification   {"label": probability, ...} for the top k classes (labels from index_to_name.json)
  embedding        the output row L2-normalised (set normalize: false to keep it as is)
Other settings: input_shape (per sample, checked before the batch runs), dtype (float32, float64, int64,
int32; default float32), topk (default 5).
"""

from __future__ import annotations

from typing import Any

import torch

if __package__:  # imported from the model_handlers package (tests, tools)
    from .canaria_base import DTYPES, BadRequest, CanariaHandler, Decoded, json_samples, parse_json, top_k_labels
else:  # imported by TorchServe from the unpacked archive, where both files sit side by side
    from canaria_base import DTYPES, BadRequest, CanariaHandler, Decoded, json_samples, parse_json, top_k_labels

TASKS = ("raw", "regression", "classification", "embedding")


class JsonTensorHandler(CanariaHandler):
    def configure(self, config: dict[str, Any]) -> None:
        self.task = config.get("task", "raw")
        if self.task not in TASKS:
            raise ValueError(f"handler.task must be one of {', '.join(TASKS)}, not {self.task!r}")
        self.dtype = DTYPES[config.get("dtype", "float32")]
        shape = config.get("input_shape")
        self.sample_shape = tuple(int(size) for size in shape) if shape else None
        self.topk = int(config.get("topk", 5))
        self.normalize = bool(config.get("normalize", True))

    def decode(self, body: Any, index: int) -> Decoded:
        try:
            payload = parse_json(body)
        except ValueError as error:
            raise BadRequest(f"the body is not JSON: {error}") from error
        return json_samples(payload, self.dtype, self.sample_shape)

    def encode(self, output: torch.Tensor) -> Any:
        if self.task == "classification":
            return top_k_labels(output.flatten(), self.topk, self.mapping)
        if self.task == "embedding" and self.normalize:
            output = torch.nn.functional.normalize(output.float().flatten(), dim=0)
        if self.task == "regression" and output.numel() == 1:
            return output.item()
        return output.tolist()
