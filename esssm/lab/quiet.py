"""The one place that keeps third-party banners off the project's commands.

Lightning prints its device summary ("GPU available: ...", "TPU available: ...") and advertising
tips on every Trainer, and some installed versions warn about their own internals (a `_pytree`
deprecation inside Lightning). None of it is about the user's run; it buried the progress lines.
`quiet_banners()` drops exactly these messages (nothing else: Lightning's real warnings stay) and
is called once by each command (`esssm`, `lightning`, `./reproduce.sh`).
"""

from __future__ import annotations

import logging
import warnings

# Info lines Lightning logs through its rank-zero logger on every Trainer, by their start.
BANNERS = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:",
           "Loading `train_dataloader` to estimate number of stepping batches")
BANNER_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Deprecation warnings raised inside third-party code, not by anything the project or a user calls.
DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class BannerFilter(logging.Filter):
    """Drops the log records that start with one of BANNERS."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(BANNERS)


def quiet_banners() -> None:
    """Filter Lightning's banners and the known third-party deprecation warnings (idempotent)."""
    for name in BANNER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, BannerFilter) for f in logger.filters):
            logger.addFilter(BannerFilter())
    for pattern in DEPRECATIONS:
        warnings.filterwarnings("ignore", message=pattern)
