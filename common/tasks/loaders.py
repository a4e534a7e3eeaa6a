"""Reading data files into rows (dicts), one loader per file suffix.

A new format is one function and one ``@register_loader(".suffix")`` line; the
registry (a ``cbpt.common.registry.Registry``) refuses a duplicate suffix at import
time, and an unknown suffix is answered with the known ones.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbpt.common.errors import TaskError
from cbpt.common.registry import DuplicateName, Registry

Row = dict[str, Any]
Loader = Callable[[Path], list[Row]]

LOADERS: Registry[Loader] = Registry("data format")


def register_loader(*suffixes: str) -> Callable[[Loader], Loader]:
    """Register ``loader`` for every suffix (lower case, with the dot), or for none if one is taken."""

    def decorate(loader: Loader) -> Loader:
        if taken := [suffix for suffix in suffixes if suffix in LOADERS]:
            raise DuplicateName(f"data format {taken[0]!r} is already registered by {LOADERS[taken[0]]!r}")
        for suffix in suffixes:
            LOADERS.register(suffix, loader)
        return loader

    return decorate


def read_rows(path: Path, field: str = "data") -> list[Row]:
    """All rows of a data file; ``field`` names the task setting that pointed here, for error messages."""
    suffix = path.suffix.lower()
    if suffix not in LOADERS:
        known = ", ".join(sorted(LOADERS))
        raise TaskError(
            f"{field}: unknown data format {path.suffix or '(no suffix)'!r} of {path}; known: {known}"
        )
    loader = LOADERS[suffix]
    if not path.is_file():
        raise TaskError(f"{field}: file not found: {path}")
    try:
        rows = loader(path)
    except UnicodeDecodeError as error:
        raise TaskError(f"{field}: {path} is not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise TaskError(f"{field}: cannot read {path}: {error.strerror}") from None
    if not rows:
        raise TaskError(f"{field}: {path} holds no rows")
    return rows


def _object(value: object, where: str) -> Row:
    if not isinstance(value, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


@register_loader(".jsonl", ".ndjson")
def load_jsonl(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            rows.append(_object(value, f"{path}:{number}"))
    return rows


@register_loader(".json")
def load_json(path: Path) -> list[Row]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, list):
        raise TaskError(f"{path}: expected a JSON array of objects")
    return [_object(item, f"{path}[{index}]") for index, item in enumerate(value)]


def _load_delimited(path: Path, delimiter: str) -> list[Row]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise TaskError(f"{path}: no header row")
        return [dict(row) for row in reader]


@register_loader(".csv")
def load_csv(path: Path) -> list[Row]:
    return _load_delimited(path, ",")


@register_loader(".tsv")
def load_tsv(path: Path) -> list[Row]:
    return _load_delimited(path, "\t")
