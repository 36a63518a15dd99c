"""Version 3.0 of `make demo`: a handler with a bug, for the canary analysis to catch.

It is Canaria's built-in image classifier, except that every third batch it is given fails: TorchServe answers
each request of that batch 503 ("Prediction failed"), which its Requests5XX counter records and the ErrorRate
check reads. The model's source holds it beside the built-in handler it extends (model_handlers/
image_classifier.py and canaria_base.py: TorchServe imports it from the unpacked archive, where they sit side
by side), and the ModelDeployment names all three (hack/demo.py ships it so, with one `kubectl patch`):

    model:
      version: "3.0"
      handler: flaky_classifier.py
      extraFiles: [index_to_name.json, image_classifier.py, canaria_base.py]
"""

from typing import Any

from image_classifier import ImageClassifier  # a sibling in the archive


class FlakyClassifier(ImageClassifier):
    """The built-in classifier; every third batch raises (a 5xx answer for each request in it)."""

    batches = 0

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        FlakyClassifier.batches += 1
        if FlakyClassifier.batches % 3 == 0:
            raise RuntimeError("version 3.0's bug: every third batch fails")
        result: list[Any] = super().handle(data, context)
        return result
