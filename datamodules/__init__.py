"""Lightning datamodules for the ES-SSM tasks: LRA ListOps, Text (IMDb), Retrieval (AAN), sCIFAR, Speech Commands.

Each exposes num_classes, vocab_size or input_dim, seq_len and task right after
construction, and yields dict batches (see datamodules.base.pad_collate).
"""

from datamodules.base import DataFolderError, MalformedDataError, TaskDataModule
from datamodules.listops import ListOpsDataModule

__all__ = ["DataFolderError", "ListOpsDataModule", "MalformedDataError", "TaskDataModule"]
