"""Errors for bad input: each names the file and, where it has one, the line or field."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    def __init__(self, path: Path | str, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field
