"""Optional model optimisation at packaging time: dynamic int8 quantisation of Linear layers, TorchScript.

This is the only module of the package that imports torch, and only when an optimisation is asked for.
The result is always a TorchScript file: TorchServe's loader rebuilds an eager model from its class and a
state_dict, which cannot hold a quantised model's packed weights, whereas a TorchScript file carries both.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PackagingError, SpecField

QUANTIZE_CHOICES = ("none", "int8")
# Enough random inputs for a stable agreement figure, few enough to run in a second on one core.
FIDELITY_SAMPLES = 256


@dataclass(frozen=True)
class Optimization:
    quantize: str = "none"
    torchscript: bool = False

    @property
    def requested(self) -> bool:
        return self.quantize != "none" or self.torchscript


def optimize(
    optimization: Optimization,
    serialized_file: Path | None,
    model_file: Path | None,
    input_shape: list[int] | None,
    workdir: Path,
) -> tuple[Path, dict[str, Any]]:
    """Write the optimised TorchScript model under `workdir`; return it with a report for the status.

    The report has the sizes before and after and, when the model's input shape is known (from the
    handler section of model-config.yaml), how closely the optimised model follows the original on
    random inputs: top-1 agreement and the largest absolute difference of the outputs.
    """
    if serialized_file is None or model_file is None:
        raise PackagingError(
            "optimisation",
            "needs an eager model: a model file and its state_dict (serializedFile)",
            SpecField.OPTIMIZATION,
        )
    import torch

    original = load_eager_model(model_file, serialized_file)
    optimized = original
    if optimization.quantize == "int8":
        optimized = _quantize_linear_int8(original)
    destination = workdir / f"{serialized_file.stem}.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(_script(optimized), str(destination))
    report: dict[str, Any] = {
        "quantize": optimization.quantize,
        "torchscript": True,
        "bytesBefore": serialized_file.stat().st_size,
        "bytesAfter": destination.stat().st_size,
    }
    if input_shape:
        report.update(_fidelity(original, optimized, input_shape))
    return destination, report


def load_eager_model(model_file: Path, state_dict_file: Path) -> Any:
    """The model as TorchServe builds it: the one class in the model file, with the state_dict loaded."""
    import torch

    module_name = f"canaria_model_{model_file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, model_file)
    if spec is None or spec.loader is None:
        raise PackagingError(f"model file {model_file.name}", "cannot be imported", SpecField.MODEL_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # TorchScript looks the class's source up through its module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise PackagingError(
            f"model file {model_file.name}", f"fails to import ({error})", SpecField.MODEL_FILE
        ) from error
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module_name]
    if len(classes) != 1:
        raise PackagingError(
            f"model file {model_file.name}",
            f"must define exactly one class, as TorchServe requires (found {len(classes)})",
            SpecField.MODEL_FILE,
        )
    model: Any = classes[0]()
    try:
        model.load_state_dict(torch.load(state_dict_file, map_location="cpu", weights_only=True))
    except Exception as error:
        raise PackagingError(
            f"serialized file {state_dict_file.name}",
            f"is not a state_dict of {classes[0].__name__} ({error})",
            SpecField.SERIALIZED_FILE,
        ) from error
    return model.eval()


def _quantize_linear_int8(model: Any) -> Any:
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _script(model: Any) -> Any:
    import torch

    try:
        return torch.jit.script(model)
    except Exception as error:
        raise PackagingError(
            "optimisation", f"TorchScript cannot compile the model ({error})", SpecField.OPTIMIZATION
        ) from error


def _fidelity(original: Any, optimized: Any, input_shape: list[int]) -> dict[str, float]:
    import torch

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(FIDELITY_SAMPLES, *input_shape, generator=generator)
    with torch.inference_mode():
        expected, actual = original(inputs), optimized(inputs)
    agreement = (expected.argmax(dim=1) == actual.argmax(dim=1)).float().mean()
    return {
        "top1Agreement": round(float(agreement), 4),
        "maxAbsDiff": round(float((expected - actual).abs().max()), 6),
    }
