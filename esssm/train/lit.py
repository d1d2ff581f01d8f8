"""LightningModule around any backbone: budget-dropout training, EMA, exact evaluation."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics.classification import MulticlassAccuracy

from esssm.batch import model_inputs
from esssm.budget import BudgetSampler
from esssm.migrations import stamp
from esssm.model import build_module, module_spec
from esssm.objectives import get_objective
from esssm.train.metrics import ExactAccuracy

Batch = dict[str, torch.Tensor]
# The keys of the `budget` setting: BudgetSampler's arguments other than k_max (the backbone's) and enabled.
BUDGET_SETTINGS = set(inspect.signature(BudgetSampler).parameters) - {"k_max", "enabled"}


class SequenceModule(L.LightningModule):
    """Sequence classification (batch x, mask, y), two-document retrieval (x1, mask1, x2, mask2,
    y) or causal language modelling (x (B, L), y (B, L) next-token ids, 0 = no target).

    The backbone is any `esssm.model.SequenceBackbone` (ES-SSM or a baseline). num_classes,
    vocab_size/input_dim and objective ("classification", "retrieval" or "lm":
    `esssm.objectives`) come from the datamodule (the CLI links them). Elastic
    backbones (k_max set) train under budget dropout unless `budget` is None: one budget per
    optimizer step, a pure function of (seed, global step), so every DDP rank and accumulation
    micro-batch agrees and a resumed run continues the same sequence.

    Args:
        backbone: the sequence model, e.g. `esssm.model.ESSSM` or `baselines.Transformer`.
        lr, weight_decay, betas: AdamW; no weight decay on biases, norms and embeddings.
        warmup_ratio, min_lr_ratio: linear warm-up over this fraction of the steps, then
            cosine decay to lr * min_lr_ratio.
        ema_decay: EMA of the weights, used for validation, test and export (None: off).
        ema_warmup: decay min(ema_decay, (1 + n) / (10 + n)) over the first updates (False: the
            authors' constant decay from step 0; see docs/fidelity.md).
        label_smoothing: for classification losses.
        budget: budget dropout, as keyword arguments of `esssm.budget.BudgetSampler` other than
            k_max (grid, k_min, warmup_epochs or warmup_steps, full_every, bias, seed); absent
            keys take its defaults, the authors' recipe. None: always k_max (the fixed-budget
            model and the no-dropout ablation). In a config: `budget: {warmup_epochs: 1}`,
            `--model.budget.seed 3`, or `budget: null`. A value out of range (k_min or a grid
            value outside 1..k_max) is an error naming it, never clamped.
        embed_dropout, embed_std, lm_head_bias: the input encoder and LM head (defaults: the
            authors' dropout 0.1, N(0, 0.02^2) embeddings, tied LM head without bias; see
            `esssm.objectives.Objective.build` and docs/fidelity.md).
        skip_nonfinite_steps: optimizer steps with a NaN/inf training loss that are skipped
            before the run stops; 0 (default) stops at the first one. A skipped step changes
            nothing: weights, optimizer state, EMA and learning-rate schedule stay as they were
            (the step still counts in global_step, the budget sequence and max_steps). Under DDP
            every rank stops together when any rank's loss is non-finite; skipping needs a
            single process (Lightning cannot skip a step under DDP).
        compile: run the model (and its EMA copy) through torch.compile: Inductor on CPU and GPU,
            the spectral kernel an opaque op inside the graph. Checkpoints are unchanged. Each new
            input shape, and the first two distinct budgets, compile once (seconds to a minute);
            measured gains in docs/benchmarks.md.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        objective: str = "classification",
        lr: float = 2e-4,
        weight_decay: float = 0.03,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.06,
        min_lr_ratio: float = 0.1,
        ema_decay: float | None = 0.999,
        label_smoothing: float = 0.0,
        budget: dict[str, Any] | None = {},  # noqa: B006 (copied, never changed)
        embed_dropout: float = 0.1,
        embed_std: float | None = 0.02,
        lm_head_bias: bool = False,
        ema_warmup: bool = True,
        skip_nonfinite_steps: int = 0,
        compile: bool = False,  # noqa: A002 (the config key users write: model.compile)
    ) -> None:
        super().__init__()
        self.objective = get_objective(objective)
        if skip_nonfinite_steps < 0:
            raise ValueError(f"skip_nonfinite_steps must be >= 0, got {skip_nonfinite_steps}")
        if isinstance(backbone, dict):  # rebuilt from a checkpoint's hyperparameters
            backbone = build_module(backbone)
        self.save_hyperparameters(ignore=["backbone"])
        self.hparams["backbone"] = module_spec(backbone)
        self.model = self.objective.build(
            backbone, num_classes, vocab_size, input_dim, embed_dropout, embed_std, lm_head_bias
        )
        self.ema = self._make_ema(ema_decay, ema_warmup)
        if compile:
            # The model and its EMA copy share one forward, so one Dynamo cache: training and
            # evaluation, budgets and lengths (dynamic after their first change) fill about 8
            # entries, Dynamo's default limit, past which it would quietly run eager code.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            for model in {self.model, self.eval_model}:
                model.compile()  # in place: state-dict keys stay those of the eager model
        self.sampler = self._make_sampler()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=self.objective.ignore_index)
        self.val_metric, self.test_metric = ExactAccuracy(), ExactAccuracy()
        self.skipped_steps = 0
        # set by a non-finite micro-batch; the optimizer step it belongs to then changes nothing
        self._nonfinite_in_step = self._step_skipped = False

    # ------------------------------------------------------------------ construction

    def _make_ema(self, decay: float | None, warmup: bool) -> AveragedModel | None:
        if decay is None:
            return None
        ema = AveragedModel(self.model, multi_avg_fn=warmup_ema(decay, warmup), use_buffers=True)
        ema.requires_grad_(False)
        return ema

    def _make_sampler(self) -> BudgetSampler | None:
        """The budget sampler of an elastic backbone; with `budget` None it always gives k_max."""
        if self.k_max is None:
            return None
        budget = self.hparams.budget
        if budget is None:
            return BudgetSampler(self.k_max, enabled=False)
        unknown = sorted(set(budget) - BUDGET_SETTINGS)
        if unknown:
            raise ValueError(f"model.budget has no setting {unknown}; its settings are {sorted(BUDGET_SETTINGS)}")
        try:
            return BudgetSampler(self.k_max, **budget)
        except ValueError as error:  # the sampler's messages start with the setting: "k_min=9 ..."
            raise ValueError(f"model.budget.{error}") from None

    @property
    def k_max(self) -> int | None:
        """The backbone's full spectral budget, or None for a backbone without one."""
        return self.model.k_max

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, test and export: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------ forward

    def forward(self, batch: Batch, budget: int | None = None, model: nn.Module | None = None):
        """Logits (B, num_classes), or (B, L, vocab) for "lm", of a batch at `budget` (None = full)."""
        return (model or self.model)(*model_inputs(batch), budget=budget)

    def evaluate(self, batch: Batch, budget: int | None) -> torch.Tensor:
        """Evaluation logits with the eval weights; used by validation and the sweep."""
        return self(batch, budget, self.eval_model)

    def example_stats(self, batch: Batch, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per example (B,): correct predictions, summed cross-entropy (nats), predictions made
        (one per example, or one per target token for "lm": `Objective.example_stats`)."""
        return self.objective.example_stats(logits, batch["y"])

    def current_budget(self) -> int | None:
        """The training budget of the current optimizer step."""
        if self.sampler is None:
            return None
        return self.sampler.sample(self.global_step, self.current_epoch)

    # ------------------------------------------------------------------ steps

    def setup(self, stage: str) -> None:
        """Check, before any step, that the data's longest sequence fits the backbone and that
        skipping non-finite steps is possible (one process)."""
        check_seq_len(getattr(self.trainer.datamodule, "seq_len", None), self.model.backbone)
        if stage == "fit" and self.hparams.skip_nonfinite_steps and self.trainer.world_size > 1:
            raise ValueError(
                f"skip_nonfinite_steps={self.hparams.skip_nonfinite_steps} needs a single process: "
                "Lightning cannot skip a training step under DDP. Set it to 0 (the run then stops at "
                "a non-finite loss on any rank) or train on one device"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        budget = self.current_budget()
        logits = self(batch, budget)
        flat_logits, flat_y = logits.reshape(-1, logits.shape[-1]), batch["y"].reshape(-1)
        loss = F.cross_entropy(
            flat_logits, flat_y, label_smoothing=self.hparams.label_smoothing,
            ignore_index=self.objective.ignore_index,
        )
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            return self._skip_nonfinite(loss, batch_idx, budget)
        self.train_acc(flat_logits.argmax(-1), flat_y)
        batch_size = batch["y"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=False, batch_size=batch_size)
        if budget is not None:
            self.log("train/budget", float(budget), batch_size=batch_size)
        return loss

    def _skip_nonfinite(self, loss: torch.Tensor, batch_idx: int, budget: int | None) -> None:
        """Stop the run on a NaN/inf loss, or skip the step while skip_nonfinite_steps allows."""
        self.skipped_steps += 1
        self._nonfinite_in_step = True
        where = (
            f"non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}, "
            f"batch {batch_idx}, budget {budget}; loss in this process: {loss.item()})"
        )
        allowed = self.hparams.skip_nonfinite_steps
        if self.skipped_steps > allowed:
            raise FloatingPointError(
                f"{where}. The run stops (skip_nonfinite_steps={allowed}, {self.skipped_steps - 1} skipped "
                "before); no checkpoint is written from non-finite weights. Lower --model.lr, check the "
                "inputs, then resume from the last checkpoint if there is one (--ckpt_path last), or allow "
                "skips with --model.skip_nonfinite_steps N"
            )
        rank_zero_warn(f"{where}: step skipped ({self.skipped_steps} of {allowed} allowed)")
        return None

    def _eval_step(self, batch: Batch, metric: ExactAccuracy) -> dict[str, torch.Tensor]:
        if "index" not in batch:
            raise KeyError(
                "evaluation batches need an 'index' entry (B,) of dataset indices, used to count "
                "each example once under DDP; the project's datamodules provide it"
            )
        logits = self.evaluate(batch, None)
        metric.update(batch["index"], *self.example_stats(batch, logits))
        return {"logits": logits}

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.val_metric)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, self.test_metric)

    def _log_eval(self, stage: str, metric: ExactAccuracy) -> None:
        result = metric.compute()  # already gathered over ranks and de-duplicated
        if not torch.isfinite(result["loss"]):
            raise FloatingPointError(
                f"{stage} loss is {float(result['loss'])} at global step {self.global_step}: the evaluated "
                "weights (the EMA copy when enabled) are not finite; nothing is saved from them"
            )
        self.log(f"{stage}/acc", result["acc"], prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log(f"{stage}/loss", result["loss"], sync_dist=False, rank_zero_only=False)
        for name, value in self.objective.extra_metrics(result["loss"]).items():
            self.log(f"{stage}/{name}", value, prog_bar=True, sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test", self.test_metric)

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self.evaluate(batch, None).softmax(-1)

    # ------------------------------------------------------------------ optimisation

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """The optimizer step, then the EMA update; a step with a skipped (non-finite) micro-batch
        changes nothing: its closure drops every gradient of the step (the other accumulated
        micro-batches' too) and returns None, which every precision plugin treats as "no
        backward", so no parameter or optimizer state moves, and the EMA is left alone."""

        def closure() -> Any:
            loss = optimizer_closure()
            if self._nonfinite_in_step:
                optimizer.zero_grad(set_to_none=True)
                return None
            return loss

        super().optimizer_step(epoch, batch_idx, optimizer, closure)
        self._step_skipped, self._nonfinite_in_step = self._nonfinite_in_step, False
        if self.ema is not None and not self._step_skipped:
            self.ema.update_parameters(self.model)

    def lr_scheduler_step(self, scheduler: torch.optim.lr_scheduler.LRScheduler, metric: Any) -> None:
        """Lightning steps the schedule after every optimizer step: not after a skipped one."""
        if not self._step_skipped:
            super().lr_scheduler_step(scheduler, metric)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # torch's random state (dropout, DropPath) goes with the weights, so a resumed run draws
        # the same masks as the uninterrupted one and ends with the same weights. Tensors only:
        # resuming loads checkpoints with weights_only. The schema version tells esssm.migrations
        # how to read the file.
        stamp(checkpoint)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "torch.cuda": cuda}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        if len(states["torch.cuda"]) == torch.cuda.device_count() > 0:  # else saved on other devices
            torch.cuda.set_rng_state_all(states["torch.cuda"])

    def on_train_start(self) -> None:
        # configure_optimizers reads estimated_stepping_batches, which builds the training loader
        # before Lightning restores its loops from a checkpoint, so Lightning never hands the saved
        # loader position (datamodules.batching.ResumableLoader) over; do it now, before the first
        # batch. A no-op unless resuming with a stateful loader.
        self.trainer.fit_loop._load_combined_loader_states()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas)
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(total, round(hp.warmup_ratio * total), hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_seq_len(data_seq_len: int | None, backbone: nn.Module) -> None:
    """Refuse data whose sequences (up to data_seq_len) exceed the backbone's longest input."""
    name, limit = next(
        ((n, getattr(backbone, n)) for n in ("seq_len", "max_len") if getattr(backbone, n, None) is not None),
        (None, None),
    )
    if data_seq_len is None or limit is None or data_seq_len <= limit:
        return
    raise ValueError(
        f"the data yields sequences of up to {data_seq_len} steps but the backbone "
        f"{type(backbone).__name__} was built for {name}={limit}: set "
        f"--model.backbone.init_args.{name} {data_seq_len}, or cut the data to {limit} "
        f"(e.g. --data.init_args.max_len {limit} where the datamodule has max_len)"
    )


def warmup_ema(decay: float, warmup: bool = True):
    """EMA update with decay min(decay, (1 + n) / (10 + n)) after n updates (warmup=False: decay).

    A fixed 0.999 would keep ~74% of the random initialisation after 300 steps; the warm-up
    lets short runs evaluate meaningful EMA weights while long runs get the full decay (the
    two agree from n = 8,990 updates on for 0.999).
    """

    def update(ema_params: list, params: list, num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        current = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - current)

    return update


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases, norms and embeddings."""
    no_decay_ids = {
        id(p)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.LayerNorm))
        for p in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, floor: float):
    """LR multiplier: linear warm-up to 1, then cosine decay to `floor` at `total_steps`."""

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return schedule
