"""Training: the LightningModule, its callbacks and metrics, the Lightning command line.

This file stays light (no Lightning import): the `esssm` and `lightning` commands read
SUBCOMMANDS to answer `--help` before anything heavy is imported.
"""

# Lightning's own predict needs a predict_dataloader, which the task datamodules do not have.
SUBCOMMANDS = {
    "fit": "train a model: --config conf/<task>/<model>.yaml (resume: --ckpt_path last)",
    "validate": "evaluate a checkpoint (--ckpt_path) on the validation split",
    "test": "evaluate a checkpoint (--ckpt_path) on the test split at every budget",
}
