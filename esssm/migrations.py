"""Checkpoint and export migrations: the one place that knows how the files' format changed.

Every checkpoint and export the project writes records its schema version under `SCHEMA_KEY`
(`stamp`). `migrate_checkpoint` and `migrate_export` bring a file's dict up to `SCHEMA_VERSION`
in memory, one small step per version (`STEPS[n]` turns version n into n + 1), before anything
is built from it; a file from a newer version is refused. Files written before the version was
recorded are version 0 and may stem from any point before it, so each step leaves a file that
does not need it unchanged.

A step takes the model's settings (a checkpoint's hyperparameters, or an export's config; both
hold `backbone` and the head facts) and `has`, which says whether the model's state dict holds a
parameter (its name inside the model, e.g. "head.bias").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esssm.budget import PAPER_GRID

SCHEMA_KEY = "esssm_schema"
Step = Callable[[dict[str, Any], Callable[[str], bool]], None]

# 0 -> 1: the budget-dropout arguments were flat (`budget_dropout`, `budget_grid`, ...).
FLAT_BUDGET_ARGS = {
    "budget_grid": "grid", "budget_k_min": "k_min", "budget_warmup_epochs": "warmup_epochs",
    "budget_warmup_steps": "warmup_steps", "budget_full_every": "full_every", "budget_bias": "bias",
    "budget_seed": "seed",
}


def fold_budget_arguments(settings: dict[str, Any], has: Callable[[str], bool]) -> None:
    """0 -> 1: fold `budget_dropout` and the flat `budget_*` arguments into the `budget` setting
    (None where budget dropout was off). A stored grid equal to the paper's was the old default
    (stored even where it reached past k_max), so it is dropped: the default applies."""
    flat = {name: settings.pop(name) for name in [*FLAT_BUDGET_ARGS, "budget_dropout"] if name in settings}
    if not flat:
        return
    if list(flat.get("budget_grid") or []) == list(PAPER_GRID):
        del flat["budget_grid"]
    dropout = flat.pop("budget_dropout", True)
    settings["budget"] = {FLAT_BUDGET_ARGS[name]: value for name, value in flat.items()} if dropout else None


def record_lm_head_bias(settings: dict[str, Any], has: Callable[[str], bool]) -> None:
    """1 -> 2: LM heads had a bias before `lm_head_bias` existed; record it where the weights hold one."""
    if settings.get("task") == "lm" and has("head.bias"):
        settings["lm_head_bias"] = True


# 2 -> 3: the spectral layers' switches were flat arguments of these backbones.
FLAT_LAYER_ARGS = {
    "ESSSM": ("gate", "rms_rescale", "normalize", "channel_chunk", "checkpoint", "init_filters", "mix_init_std",
              "weight_sum", "fast"),
    "FixedSpectralSSM": ("normalize", "channel_chunk"),
    "ARSTU": ("channel_chunk",),
}


def nest_layer_settings(settings: dict[str, Any], has: Callable[[str], bool]) -> None:
    """2 -> 3: move the flat layer switches of an ES-SSM, fixed spectral or AR-STU backbone spec
    into its `layer` argument (the fields that differ from the class's defaults, absent ones keep them)."""
    spec = settings.get("backbone")
    if not isinstance(spec, dict) or "layer" in spec.get("init_args", {}):
        return
    flat = FLAT_LAYER_ARGS.get(str(spec.get("class_path", "")).rpartition(".")[2], ())
    init_args = spec.setdefault("init_args", {})
    layer = {name: init_args.pop(name) for name in flat if name in init_args}
    if layer:
        init_args["layer"] = layer


def rename_task_to_objective(settings: dict[str, Any], has: Callable[[str], bool]) -> None:
    """3 -> 4: the head kind ("classification", "retrieval", "lm") was called `task`."""
    if "task" in settings:
        settings.setdefault("objective", settings.pop("task"))


STEPS: tuple[Step, ...] = (fold_budget_arguments, record_lm_head_bias, nest_layer_settings, rename_task_to_objective)
SCHEMA_VERSION = len(STEPS)


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
    """Record the current schema version in a checkpoint or export dict about to be written."""
    payload[SCHEMA_KEY] = SCHEMA_VERSION
    return payload


def schema_version(payload: Mapping[str, Any], what: str) -> int:
    """The schema version of a loaded file (0 where none is recorded); a newer one than this code
    reads, or one that is not a version, is refused naming `what` (e.g. "checkpoint run.ckpt")."""
    version = payload.get(SCHEMA_KEY, 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"{what} records schema version {version!r} under {SCHEMA_KEY!r}; expected an int >= 0")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{what} was written by a newer ES-SSM Lab (schema version {version}; this code reads versions "
            f"up to {SCHEMA_VERSION}): update the project to load it"
        )
    return version


def _migrate(payload: dict[str, Any], settings: dict[str, Any], state: Mapping[str, Any], prefix: str, what: str) -> None:
    version = schema_version(payload, what)
    for step in STEPS[version:]:
        step(settings, lambda name: prefix + name in state)
    stamp(payload)


def migrate_checkpoint(checkpoint: dict[str, Any], what: str) -> dict[str, Any]:
    """A loaded Lightning checkpoint brought to the current schema, in place (and returned)."""
    settings = checkpoint.setdefault("hyper_parameters", {})
    _migrate(checkpoint, settings, checkpoint["state_dict"], "model.", what)
    return checkpoint


def migrate_export(payload: dict[str, Any], what: str) -> dict[str, Any]:
    """A loaded `esssm export` payload brought to the current schema, in place (and returned)."""
    _migrate(payload, payload["config"], payload["state_dict"], "", what)
    return payload
