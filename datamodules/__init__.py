"""Lightning datamodules: LRA ListOps, Text (IMDb), Retrieval (AAN), sCIFAR, Speech Commands,
and byte-level language modelling.

Each exposes num_classes, vocab_size or input_dim, seq_len and objective right after
construction, and yields dict batches (see datamodules.batching.pad_collate).

Names are imported on first use, so ``python -m datamodules.listops`` does not import
its own module twice and ``import datamodules`` stays cheap.
"""

from esssm.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
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
})
