"""Helpers the datamodule tests share: a module read from its folder, a bad line appended to a file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

import lightning as L

Module = TypeVar("Module", bound=L.LightningDataModule)


def fitted(module: Module) -> Module:
    """The datamodule with its fit splits read."""
    module.setup("fit")
    return module


def append_line(path: Path, line: str) -> str:
    """Append `line` to a text file; the regex of the location an error must name: "<path>:<line no>: "."""
    text = path.read_text() + line + "\n"
    path.write_text(text)
    line_number = text.count("\n")
    return re.escape(f"{path}:{line_number}: ")
