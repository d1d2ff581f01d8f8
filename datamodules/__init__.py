"""Lightning datamodules: LRA ListOps, Text (IMDb), Retrieval (AAN), sCIFAR, Speech Commands.

Each exposes num_classes, vocab_size or input_dim, seq_len and task right after
construction, and yields dict batches (see datamodules.base.pad_collate).
"""

from datamodules.aan import AANDataModule
from datamodules.base import DataFolderError, MalformedDataError, TaskDataModule
from datamodules.imdb import IMDBDataModule
from datamodules.listops import ListOpsDataModule
from datamodules.scifar import SCIFARDataModule
from datamodules.speech_commands import SpeechCommandsDataModule

__all__ = [
    "AANDataModule",
    "DataFolderError",
    "IMDBDataModule",
    "ListOpsDataModule",
    "MalformedDataError",
    "SCIFARDataModule",
    "SpeechCommandsDataModule",
    "TaskDataModule",
]
