"""Lightning datamodules: LRA ListOps, Text (IMDb), Retrieval (AAN), sCIFAR, Speech Commands,
and byte-level language modelling.

Each exposes num_classes, vocab_size or input_dim, seq_len and task right after
construction, and yields dict batches (see datamodules.batching.pad_collate).

Names are imported on first use, so ``python -m datamodules.listops`` does not import
its own module twice and ``import datamodules`` stays cheap.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AANDataModule": "datamodules.aan",
    "ByteLMDataModule": "datamodules.bytelm",
    "DataFolderError": "datamodules.sources",
    "IMDBDataModule": "datamodules.imdb",
    "ListOpsDataModule": "datamodules.listops",
    "MalformedDataError": "datamodules.parsing",
    "PathfinderDataModule": "datamodules.pathfinder",
    "SCIFARDataModule": "datamodules.scifar",
    "SpeechCommandsDataModule": "datamodules.speech_commands",
    "TaskDataModule": "datamodules.base",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
