"""Backbones, pooling and heads shared by ES-SSM and every baseline (plain torch, no Lightning).

The backbone interface every sequence model in the project implements:

    backbone.d_model: int
    backbone.k_max: int | None          # None for models without a spectral budget
    backbone(x, mask=None, budget=None) -> (B, L, d_model)

where x is the already-encoded input (B, L, d_model) and mask (B, L) is True at valid tokens.
Input encoders and heads live in `SequenceClassifier`/`RetrievalClassifier`, so a config
swaps one backbone for another without touching the data side.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass, replace
from typing import Any, TypeVar

import torch
from torch import nn

from esssm.layer import ESSSMLayer, ESSSMSettings, check_budget

MixerFactory = Callable[[int], nn.Module]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability p."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Sequential):
    """Linear(d, m*d) -> GELU -> Dropout -> Linear(m*d, d), applied per token."""

    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.1) -> None:
        super().__init__(
            nn.Linear(d_model, mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * d_model, d_model),
        )


class ResidualBlock(nn.Module):
    """Pre-norm block: x += DropPath(Dropout(mixer(LN x))); x += DropPath(FFN(LN x)).

    The authors' block has no Dropout on the mixer branch (mixer_dropout = 0, the default):
    dropout acts only inside the FFN.
    """

    def __init__(
        self, mixer: nn.Module, d_model: int, ffn_mult: int, dropout: float, drop_path: float,
        mixer_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(d_model), mixer
        # Mixer-only blocks (Mamba-style, ffn_mult=0) get no FFN and no second norm: unused
        # parameters would inflate counts and break DDP's gradient bucketing.
        self.norm2 = nn.LayerNorm(d_model) if ffn_mult > 0 else None
        self.ffn = FeedForward(d_model, ffn_mult, dropout) if ffn_mult > 0 else None
        self.dropout, self.drop_path = nn.Dropout(mixer_dropout), DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, budget: int | None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.dropout(self.mixer(self.norm1(x), mask=mask, budget=budget)))
        if self.ffn is not None:
            x = x + self.drop_path(self.ffn(self.norm2(x)))
        return x


Backbone = TypeVar("Backbone", bound=type)


def records_init_args(cls: Backbone) -> Backbone:
    """Class decorator: an instance of `cls` keeps its constructor's arguments (defaults filled
    in, settings dataclasses as plain dicts, so a checkpoint of them loads weights only) as
    `init_args`, the form `module_spec` stores in checkpoints. The class actually built records
    its own arguments; a constructor that passes **kwargs on to its parent's records the
    arguments its parent recorded for them."""
    init = cls.__init__
    signature = inspect.signature(init)
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(init)
    def recording_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        own = {
            name: _plain(signature.parameters[name].default, value)
            for name, value in list(bound.arguments.items())[1:]
            if signature.parameters[name].kind is not inspect.Parameter.VAR_KEYWORD
        }
        self.init_args = {**own, **(vars(self).get("init_args", {}) if passes_on else {})}

    recording_init.records_init_args = True  # what `is_backbone_class` looks for
    cls.__init__ = recording_init
    return cls


def _plain(default: Any, value: Any) -> Any:
    """An argument as a checkpoint stores it: a settings dataclass as the dict of all its fields
    (a dict given for one holds the fields that differ from the parameter's default)."""
    if is_dataclass(default) and isinstance(value, Mapping):
        value = replace(default, **value)
    return asdict(value) if is_dataclass(value) else value


def is_backbone_class(obj: Any) -> bool:
    """Whether `obj` is an nn.Module class decorated with `records_init_args`: the only classes
    `module_spec` writes into checkpoints, so the only ones `build_module` calls."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return False
    return getattr(vars(obj).get("__init__"), "records_init_args", False)


class SequenceBackbone(nn.Module):
    """A stack of pre-norm residual blocks around any mixer, then a final LayerNorm.

    (B, L, D) -> (B, L, D). Mixers are built by `mixer_factory(layer_index)` and are called as
    `mixer(x, mask=mask, budget=budget)`; the same budget reaches every layer of one pass.
    Stochastic depth rises linearly from 0 at the first layer to `drop_path` at the last;
    `dropout` acts inside the FFN, `mixer_dropout` (default 0, as the authors) on the mixer output.

    Every concrete backbone class is decorated with `records_init_args`, so it keeps the
    arguments it was built with in `init_args` and a checkpoint can rebuild it from
    `module_spec(backbone)` with no config file at hand.
    """

    k_max: int | None = None
    init_args: dict[str, Any]

    def __init__(
        self,
        mixer_factory: MixerFactory,
        d_model: int,
        n_layers: int,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.05,
        mixer_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.d_model = d_model
        rates = [drop_path * i / max(1, n_layers - 1) for i in range(n_layers)]
        self.blocks = nn.ModuleList(
            ResidualBlock(mixer_factory(i), d_model, ffn_mult, dropout, rate, mixer_dropout)
            for i, rate in enumerate(rates)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"backbone expects (batch, length, d_model={self.d_model}), got {tuple(x.shape)}"
            )
        for block in self.blocks:
            x = block(x, mask, budget)
        return self.norm(x)


@records_init_args
class ESSSM(SequenceBackbone):
    """The ES-SSM backbone: ESSSMLayer mixers; one model, evaluated at any budget k <= k_max.

    layer: the layers' switches (`esssm.layer.ESSSMSettings`, or a dict of the fields that differ
    from its defaults); the other arguments are `SequenceBackbone`'s."""

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 8,
        seq_len: int = 2048,
        k_max: int = 32,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.05,
        mixer_dropout: float = 0.0,
        layer: ESSSMSettings = ESSSMSettings(),  # noqa: B008 (frozen)
    ) -> None:
        settings = ESSSMSettings.of(layer)
        super().__init__(
            lambda _: ESSSMLayer(d_model, seq_len, k_max, settings),
            d_model, n_layers, ffn_mult, dropout, drop_path, mixer_dropout,
        )
        self.k_max, self.seq_len = k_max, seq_len

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        return super().forward(x, mask, check_budget(budget, self.k_max))


class InputEncoder(nn.Module):
    """Token ids (B, L) -> embedding, or continuous features (B, L, C) -> linear, to (B, L, D),
    then Dropout(dropout) (the authors' embedding dropout, 0.1).

    Token embeddings start N(0, embed_std^2) (the authors: 0.02; None keeps PyTorch's N(0, 1)).
    """

    def __init__(
        self, d_model: int, vocab_size: int | None = None, input_dim: int | None = None,
        dropout: float = 0.1, embed_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(
                "give exactly one of vocab_size (token inputs) or input_dim (continuous inputs), "
                f"got vocab_size={vocab_size}, input_dim={input_dim}"
            )
        self.tokens = vocab_size is not None
        self.proj = nn.Embedding(vocab_size, d_model) if self.tokens else nn.Linear(input_dim, d_model)
        if self.tokens and embed_std is not None:
            nn.init.normal_(self.proj.weight, std=embed_std)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens and x.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"token input must be integer ids (B, L), got dtype {x.dtype}")
        if not self.tokens and (x.dim() != 3 or not x.is_floating_point()):
            raise ValueError(f"continuous input must be float (B, L, C), got {x.dtype} {tuple(x.shape)}")
        return self.dropout(self.proj(x))


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over valid tokens: (B, L, D), mask (B, L) True = valid -> (B, D)."""
    if mask is None:
        return h.mean(dim=1)
    weights = mask.to(h.dtype).unsqueeze(-1)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class SequenceClassifier(nn.Module):
    """Encoder -> backbone -> masked mean pooling -> linear head: (B, L[, C]) -> logits (B, classes).

    embed_dropout, embed_std: the input encoder's dropout and token-embedding init (InputEncoder).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        embed_dropout: float = 0.1,
        embed_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        self.encoder = InputEncoder(backbone.d_model, vocab_size, input_dim, embed_dropout, embed_std)
        self.backbone = backbone
        self.head = self.make_head(backbone.d_model, num_classes)

    @staticmethod
    def make_head(d_model: int, num_classes: int) -> nn.Module:
        """Pooled features (B, d_model) -> logits (B, num_classes)."""
        return nn.Linear(d_model, num_classes)

    @property
    def k_max(self) -> int | None:
        return getattr(self.backbone, "k_max", None)

    def features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        """Pooled sequence features (B, D)."""
        return masked_mean(self.backbone(self.encoder(x), mask=mask, budget=budget), mask)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        return self.head(self.features(x, mask, budget))


class RetrievalClassifier(SequenceClassifier):
    """Two documents through one shared backbone, [a, b, a-b, a*b] -> MLP -> logits (B, classes)."""

    @staticmethod
    def make_head(d_model: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Linear(d_model, num_classes))

    def forward(  # type: ignore[override]
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        mask1: torch.Tensor | None = None,
        mask2: torch.Tensor | None = None,
        budget: int | None = None,
    ) -> torch.Tensor:
        a, b = self.features(x1, mask1, budget), self.features(x2, mask2, budget)
        return self.head(torch.cat([a, b, a - b, a * b], dim=-1))


class LanguageModel(SequenceClassifier):
    """Causal next-token model: embedding -> backbone -> head tied to the embedding.

    Token ids (B, L) -> logits (B, L, vocab_size) at every position. Tying the output matrix
    to the input embedding is the authors' byte-LM choice: it saves vocab x D parameters and
    keeps the head in the embedding space. Their head has no bias (head_bias=False, the
    default). Embeddings start N(0, embed_std^2), the
    authors' 0.02 by default. Every part is causal when the backbone is (ES-SSM is), so
    position t never sees bytes after t.
    """

    def __init__(
        self, backbone: nn.Module, vocab_size: int, embed_dropout: float = 0.1,
        embed_std: float | None = 0.02, head_bias: bool = False,
    ) -> None:
        super().__init__(backbone, vocab_size, vocab_size, None, embed_dropout, embed_std)
        self.head = nn.Linear(backbone.d_model, vocab_size, bias=head_bias)
        self.head.weight = self.encoder.proj.weight

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        return self.head(self.backbone(self.encoder(x), mask=mask, budget=budget))


def module_spec(module: SequenceBackbone) -> dict[str, Any]:
    """{"class_path", "init_args"} of a backbone: the form configs and checkpoints store."""
    cls = type(module)
    if not is_backbone_class(cls):
        raise TypeError(f"{cls.__qualname__} records no init_args: decorate the class with @records_init_args")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(module.init_args)}


def build_module(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a {"class_path", "init_args"} spec (as written by `module_spec` or a config).

    Only backbone classes (`is_backbone_class`) are called: a spec read from a checkpoint or an
    export is data, and naming any other callable (subprocess.Popen, os.system) must not run it.
    """
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"expected a dict with 'class_path' and 'init_args', got {spec!r}")
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not is_backbone_class(cls):
        raise ValueError(
            f"class_path {spec['class_path']!r} is not a backbone class (an nn.Module decorated with "
            "@records_init_args); backbone specs in checkpoints, exports and configs name only those"
        )
    return cls(**spec.get("init_args", {}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def active_parameters(model: nn.Module, budget: int | None = None) -> int:
    """Parameters a forward pass at `budget` uses: all of them minus the channels beyond k."""
    inactive = sum(
        m.inactive_parameters(budget) for m in model.modules() if hasattr(m, "inactive_parameters")
    )
    return count_parameters(model) - inactive
