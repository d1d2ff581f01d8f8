"""Reading release files row by row: labels, TSV rows and byte strings, checked, with errors that
name the file and line."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class MalformedDataError(ValueError):
    """A data file holds a row or value that does not fit its format."""


def malformed(path: Path, line: int, problem: str) -> MalformedDataError:
    """The error for a bad row: ``<file>:<line>: <problem>``."""
    return MalformedDataError(f"{path}:{line}: {problem}")


def _range_problem(label: int, num_classes: int) -> str | None:
    return None if 0 <= label < num_classes else f"label {label} is outside 0..{num_classes - 1}"


def parse_label(field: bytes, num_classes: int, path: Path, line: int) -> int:
    """A class label written as an integer ("1", or "1.0" as some releases write it), checked to
    lie in [0, num_classes). "3.7", "inf" and "nan" are refused with the file and line."""
    text = field.decode("utf-8", "replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise malformed(path, line, f"label {text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise malformed(path, line, f"label {text!r} is not an integer class id")
    problem = _range_problem(int(value), num_classes)
    if problem:
        raise malformed(path, line, problem)
    return int(value)


def check_labels(labels: Sequence[Any], num_classes: int, source: str | Path) -> np.ndarray:
    """Labels read from a binary source (one array per file), as int64, refusing non-integers
    and values outside [0, num_classes); the error names the file and the entry."""
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise MalformedDataError(f"{source}: labels must be a list of integers; got {array.dtype} {array.shape}")
    for index, label in enumerate(array.tolist()):
        problem = _range_problem(label, num_classes)
        if problem:
            raise MalformedDataError(f"{source}: entry {index}: {problem}")
    return array.astype(np.int64)


def require_nonempty(sequence: np.ndarray, path: str | Path, line: int | None, what: str) -> np.ndarray:
    """`sequence` unchanged, or an error naming the file (and line) when it is empty: a model
    cannot pool over zero steps."""
    if len(sequence) == 0:
        where = f"{path}:{line}" if line is not None else str(path)
        raise MalformedDataError(f"{where}: {what} is empty (every example needs at least one token)")
    return sequence


def iter_tsv_rows(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (line number, tab-separated byte fields) for each non-blank line, quoting off.

    Read in binary so only ``\\n`` ends a row (a stray ``\\r`` inside a text stays text),
    and so byte-level tasks get the file's exact bytes.
    """
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip(b"\r\n")
            if line:
                yield line_number, line.split(b"\t")


def bytes_to_array(data: bytes, max_len: int) -> np.ndarray:
    """The first ``max_len`` bytes as a uint8 array (ids are byte + 1, added at lookup)."""
    return np.frombuffer(data[:max_len], dtype=np.uint8).copy()
