"""TorchServe handlers shipped with Canaria.

Each built-in handler name maps to a file here (`image_classifier` -> image_classifier.py, `json_tensor` ->
json_tensor.py). The packager copies the handler and `canaria_base.py` into the model archive, where
TorchServe imports them as top-level modules; nothing here is imported by the operator.
"""
