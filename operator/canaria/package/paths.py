"""Paths given relative to the model's source, checked before anything is built."""

from __future__ import annotations

import glob
from pathlib import Path

from .archive import Entry
from .errors import PackagingError, SpecField

WILDCARDS = ("*", "?", "[")


def resolve_in_source(root: Path, relative: str, field: SpecField) -> Path:
    """The file `relative` under `root`; refuses absolute paths, `..` escapes and missing files."""
    subject = f"{_field_noun(field)} {relative}"
    candidate = Path(relative)
    if candidate.is_absolute():
        raise PackagingError(subject, "must be a path relative to the model's source", field)
    path = (root / candidate).resolve()
    if not path.is_relative_to(root.resolve()):
        raise PackagingError(subject, "points outside the model's source", field)
    if not path.is_file():
        raise PackagingError(subject, "not found in the model's source", field)
    return path


def extra_file_entries(root: Path, patterns: list[str]) -> list[Entry]:
    """Extra files as torch-model-archiver packs them: a file at the archive's root under its own name, a
    directory's contents at the root with their relative paths, and wildcards expanded (sorted)."""
    entries: list[Entry] = []
    for pattern in patterns:
        if any(char in pattern for char in WILDCARDS):
            matches = sorted(glob.glob(pattern, root_dir=root))
            if not matches:
                raise PackagingError(f"extra files {pattern}", "the pattern matches nothing", SpecField.EXTRA_FILES)
            for match in matches:
                entries.extend(_entries_for(root, match))
        else:
            entries.extend(_entries_for(root, pattern))
    return entries


def _entries_for(root: Path, relative: str) -> list[Entry]:
    directory = (root / relative).resolve()
    if directory.is_dir() and directory.is_relative_to(root.resolve()):
        files = sorted(path for path in directory.rglob("*") if path.is_file())
        return [Entry(path.relative_to(directory).as_posix(), path) for path in files]
    path = resolve_in_source(root, relative, SpecField.EXTRA_FILES)
    return [Entry(path.name, path)]


def _field_noun(field: SpecField) -> str:
    return {
        SpecField.SERIALIZED_FILE: "serialized file",
        SpecField.MODEL_FILE: "model file",
        SpecField.HANDLER: "handler",
        SpecField.EXTRA_FILES: "extra file",
        SpecField.REQUIREMENTS: "requirements",
    }.get(field, "file")
