"""Resolve `--handler` to the handler file(s) that go into the archive.

A built-in name (`canaria.schema.BUILTIN_HANDLERS`, the list the CRD validates against) means the file
`<name>.py` of the `model_handlers` package; TorchServe imports the handler from the unpacked archive, so the
shared module those handlers import is packed too.
Anything else must be a `.py` file in the model's source, optionally with `:function` as TorchServe allows.
"""

from __future__ import annotations

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
