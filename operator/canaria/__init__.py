"""Canaria: a Kubernetes operator that serves PyTorch models with TorchServe and rolls out new versions."""

__version__ = "0.1.0"
