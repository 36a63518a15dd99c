"""Resolve `--handler` to the handler file(s) that go into the archive.

A built-in name (`canaria.schema.BUILTIN_HANDLERS`, the list the CRD validates against) means the file
`<name>.py` of the `model_handlers` package; TorchServe imports the handler from the unpacked archive, so the
shared module those handlers import is packed too.
Anything else must be a `.py` file in the model's source, optionally with `:function` as TorchServe allows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from canaria.schema import BUILTIN_HANDLERS

from .archive import Entry
from .errors import PackagingError, SpecField
from .paths import resolve_in_source

# Imported by every built-in handler; shipped beside it in the archive.
SHARED_HANDLER_MODULES = ("canaria_base.py",)


def builtin_handlers_dir() -> Path:
    import model_handlers  # a plain package without torch: importing it is cheap

    return Path(model_handlers.__file__).resolve().parent


def resolve_handler(handler: str, root: Path) -> tuple[str, list[Entry]]:
    """(the manifest's handler value, the files to pack for it)."""
    module, separator, function = handler.partition(":")
    suffix = f"{separator}{function}" if function else ""
    if module in BUILTIN_HANDLERS:
        directory = builtin_handlers_dir()
        names = (f"{module}.py", *SHARED_HANDLER_MODULES)
        return names[0] + suffix, [Entry(name, directory / name) for name in names]
    if module.endswith(".py"):
        path = resolve_in_source(root, module, SpecField.HANDLER)
        return path.name + suffix, [Entry(path.name, path)]
    raise PackagingError(
        f"handler {handler!r}",
        f"unknown handler: use one of {', '.join(BUILTIN_HANDLERS)} or the path of a .py file in the model's source",
        SpecField.HANDLER,
    )


IMPORT_CHECK_TIMEOUT_S = 300  # a handler importing torch on a loaded node takes seconds, not minutes
# Imports the handler file the way TorchServe does (its directory first on sys.path) and nothing more.
_IMPORT_CHECK = """
import importlib.util, sys
path = sys.argv[1]
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("handler_under_check", path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


def check_handler_imports(handler_file: Path, root: Path) -> None:
    """Fails packaging when a user's handler cannot be imported, naming the error: otherwise TorchServe's
    workers die at every start and the pod only ever says "not ready". Run in a child interpreter, so the
    handler's imports (torch, usually) never load into the packager."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHECK, str(handler_file), str(root)],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=IMPORT_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise PackagingError(
            f"handler {handler_file.name}", f"importing it took over {IMPORT_CHECK_TIMEOUT_S}s", SpecField.HANDLER
        ) from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise PackagingError(
            f"handler {handler_file.name}",
            f"fails to import: {lines[-1] if lines else f'exit code {result.returncode}'}",
            SpecField.HANDLER,
        )
