"""The one kind of failure packaging reports: a problem the user fixes by editing one ModelDeployment field."""

from __future__ import annotations

from enum import StrEnum


class SpecField(StrEnum):
    """The ModelDeployment field that a packaging failure points the user at."""

    STORAGE_URI = "spec.model.storageUri"
    SHA256 = "spec.model.sha256"
    HANDLER = "spec.model.handler"
    SERIALIZED_FILE = "spec.model.serializedFile"
    MODEL_FILE = "spec.model.modelFile"
    EXTRA_FILES = "spec.model.extraFiles"
    REQUIREMENTS = "spec.model.requirements"
    NAME = "spec.model.name"
    VERSION = "spec.model.version"
    OPTIMIZATION = "spec.model.optimization"
    # Not the user's doing (a full disk, an unwritable model store): the pod's volumes are to blame.
    MODEL_STORE = "the serving pod's model-store volume"
    # The TorchServe config the operator renders into a ConfigMap; a failure here is an operator bug.
    CONFIG = "the operator-rendered TorchServe config"


class PackagingError(Exception):
    """A failure with a subject (what failed), the problem, and the spec field to fix.

    `line()` is the single line written to stderr and to the container's termination message, which the
    operator copies into the ModelDeployment's status.
    """

    def __init__(self, subject: str, problem: str, field: SpecField) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject = subject
        self.problem = problem
        self.field = field

    def line(self) -> str:
        text = f"canaria-package: {self.subject}: {self.problem} (check {self.field.value})"
        # Kubernetes keeps at most 4096 bytes of a termination message, and one line reads best.
        return " ".join(text.split())[:1024]
