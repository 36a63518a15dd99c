"""Helpers that start the real parts tests run against (TorchServe, Prometheus) and always stop them."""
