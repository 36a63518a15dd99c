"""What Canaria's handlers share: per-request decoding and errors, one forward pass per batch.

TorchServe hands a handler a batch of requests (up to the model's batchSize, gathered for at most
maxBatchDelay). A request that cannot be decoded is answered 400 on its own; the others in its batch are
still served. A batch whose forward pass fails is retried one request at a time, so one bad input cannot
fail its neighbours; a request that fails alone is answered 500, which is what a broken model should look
like to the rollout analysis (Requests5XX), while malformed input stays a client error (Requests4XX).

This file is packed into the model archive beside the handler, which imports it as a top-level module.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

# Tells a client (and the tests) how many requests shared its forward pass.
BATCH_SIZE_HEADER = "X-Canaria-Batch-Size"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32}


class BadRequest(Exception):
    """A request this handler cannot serve; only that request is answered with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Decoded:
    """One request's input: `samples` has a leading batch dimension; `many` if the client sent a list."""

    samples: torch.Tensor
    many: bool = False


def request_body(request: dict[str, Any]) -> Any:
    """The request's payload: TorchServe puts a raw body under "body", a form field under "data"."""
    for key in ("data", "body"):
        if request.get(key) is not None:
            return request[key]
    raise BadRequest("empty request")


def parse_json(body: Any) -> Any:
    """JSON as TorchServe left it: already parsed for application/json, else bytes or text to parse."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="strict")
    if isinstance(body, str):
        return json.loads(body)
    return body


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"not valid base64: {error}") from error


def tensor_from_json(value: Any, dtype: torch.dtype) -> torch.Tensor:
    try:
        return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as error:
        raise BadRequest(f"not a rectangular array of numbers: {error}") from error


def check_sample_shape(sample_shape: tuple[int, ...], expected: tuple[int, ...] | None) -> None:
    if expected is not None and sample_shape != expected:
        raise BadRequest(f"expected an input of shape {list(expected)}, got {list(sample_shape)}")


def json_samples(payload: Any, dtype: torch.dtype, expected_shape: tuple[int, ...] | None) -> Decoded:
    """A JSON request: one sample (a nested list, or {"data": ...}) or several ({"instances": [...]})."""
    if isinstance(payload, dict):
        if "instances" in payload:
            samples = tensor_from_json(payload["instances"], dtype)
            if samples.dim() == 0 or len(samples) == 0:
                raise BadRequest('"instances" must be a non-empty list')
            check_sample_shape(tuple(samples.shape[1:]), expected_shape)
            return Decoded(samples, many=True)
        if "data" in payload:
            payload = payload["data"]
        else:
            raise BadRequest('a JSON object needs "data" (one input) or "instances" (a list of inputs)')
    sample = tensor_from_json(payload, dtype)
    check_sample_shape(tuple(sample.shape), expected_shape)
    return Decoded(sample.unsqueeze(0))


class CanariaHandler(BaseHandler):
    """Base of Canaria's handlers: subclasses implement `decode` and `encode`.

    Model loading is TorchServe's own (BaseHandler): an eager model from the model file and its
    state_dict, or a TorchScript file. The handler section of the archive's model-config.yaml, if any,
    is passed to `configure`.
    """

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.configure(yaml_config.get("handler") or {})

    def configure(self, config: dict[str, Any]) -> None:
        """Read this handler's settings from model-config.yaml's `handler` section."""

    def decode(self, body: Any, index: int) -> Decoded:
        raise NotImplementedError

    def encode(self, output: torch.Tensor) -> Any:
        """The response for one sample's output row."""
        raise NotImplementedError

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        with torch.inference_mode():  # no autograd bookkeeping, for decoding as much as for the model
            return self._handle_batch(data, context)

    def _handle_batch(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        responses: list[Any] = [None] * len(data)
        decoded: dict[int, Decoded] = {}
        for index, request in enumerate(data):
            try:
                decoded[index] = self.decode(request_body(request), index)
            except BadRequest as error:
                responses[index] = self._error(index, error.status, str(error))
            except Exception as error:  # a decoder bug must not fail the batch
                logger.exception("decoding request %d failed", index)
                responses[index] = self._error(index, 400, f"cannot decode the request: {error}")
        for index, outputs in self._infer(decoded).items():
            if isinstance(outputs, Exception):
                responses[index] = self._error(index, 500, f"the model failed on this input: {outputs}")
                continue
            encoded = [self.encode(row) for row in outputs]
            responses[index] = {"predictions": encoded} if decoded[index].many else encoded[0]
            context.set_response_header(index, BATCH_SIZE_HEADER, str(len(data)))
        return responses

    def _infer(self, decoded: dict[int, Decoded]) -> dict[int, torch.Tensor | Exception]:
        """One forward pass per group of same-shaped inputs; a failing group is retried per request."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in decoded.items():
            groups.setdefault(tuple(item.samples.shape[1:]), []).append(index)
        results: dict[int, torch.Tensor | Exception] = {}
        for indices in groups.values():
            try:
                results.update(self._forward_group(decoded, indices))
            except Exception:
                if len(indices) == 1:
                    results[indices[0]] = self._forward_alone(decoded[indices[0]])
                    continue
                logger.warning("a batch of %d failed; retrying each request alone", len(indices))
                for index in indices:
                    results[index] = self._forward_alone(decoded[index])
        return results

    def _forward_group(self, decoded: dict[int, Decoded], indices: list[int]) -> dict[int, torch.Tensor]:
        samples = [decoded[index].samples for index in indices]
        batch = samples[0] if len(samples) == 1 else torch.cat(samples)
        outputs = self.forward(batch)
        sizes = [len(decoded[index].samples) for index in indices]
        return dict(zip(indices, torch.split(outputs, sizes), strict=True))

    def _forward_alone(self, item: Decoded) -> torch.Tensor | Exception:
        try:
            return self.forward(item.samples)
        except Exception as error:
            logger.exception("forward pass failed")
            return error

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        outputs = self.model(batch.to(self.device))
        if not isinstance(outputs, torch.Tensor) or outputs.dim() == 0 or len(outputs) != len(batch):
            raise TypeError("the model must return one output row per input")
        return outputs.cpu()

    def _error(self, index: int, status: int, message: str) -> dict[str, Any]:
        self.context.set_response_status(status, message, index)
        kind = "BadRequest" if status < 500 else "InternalServerError"
        return {"code": status, "type": kind, "message": message}


def top_k_labels(logits: torch.Tensor, k: int, mapping: dict[str, str] | None) -> dict[str, float]:
    """{label: probability} for the k most probable classes, most probable first (TorchServe's format)."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    values, classes = torch.topk(probabilities, min(k, probabilities.numel()))
    labels = [mapping.get(str(c), str(c)) if mapping else str(c) for c in classes.tolist()]
    return {label: round(value, 6) for label, value in zip(labels, values.tolist(), strict=True)}
