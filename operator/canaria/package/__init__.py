"""Packaging: fetch a model's files and build the TorchServe archive (.mar) that the serving pod loads.

Runs as the serving pod's init container (`python -m canaria.package ...`, see `cli.py`). It imports torch
only to optimise a model; the operator process never imports this package.
"""

from .archive import ArchiveFormat
from .build import PackageRequest, PackageResult, package
from .errors import PackagingError, SpecField
from .optimize import Optimization

__all__ = ["ArchiveFormat", "Optimization", "PackageRequest", "PackageResult", "PackagingError", "SpecField", "package"]
