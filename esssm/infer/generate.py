"""Generate bytes from a byte-level ES-SSM language model at any budget, exactly and fast.

Two methods give the same bytes (greedy) and the same logits to float32 round-off:

- "naive": the readable reference. For every new byte, the whole sequence so far goes through
  the model's own forward pass: O(t) work for byte t, O(N^2) for N bytes.
- "futurefill": FutureFill (Agarwal et al., "FutureFill: Fast Generation from Convolutional
  Sequence Models", ICLR 2026), its continuous variant. Everything that is pointwise in time
  (embedding, norms, gate, skip, FFN, head) runs through the model's own modules on the new
  byte only; each ES-SSM layer's causal convolution U_j(t) = sum_{s<=t} phi_j(t-s) u(s) is
  replaced by a cache of the contributions of past inputs to future positions. After input n
  (counted from where the cache was last built), the block of the last 2^m inputs, 2^m the
  largest power of two dividing n, is convolved by FFT into the next 2^m positions: every pair
  (s, t), s < t, is added exactly once and before position t is needed, so each byte costs
  O(k D log^2 L) amortised instead of O(k D L log L). Only the k active channels are cached
  and updated, so the cost follows the budget.

Budgets may change from byte to byte (`budget` as a function of the position). The meaning
is the per-position budget forward (`scheduled_logits`): at position t every layer uses
k(t) channels, over a history whose lower-layer outputs were computed at their own
positions' budgets. Lowering the budget drops the cached channels beyond it; raising it
rebuilds the cache of the active channels from the stored layer inputs with one FFT.

Limits: the context never exceeds the model's seq_len (the filters have seq_len taps and the
model never saw longer contexts); a longer request is refused with a clear error.
Token ids: byte b is id b + 1 and id 0 is padding, as in `datamodules.ByteLMDataModule`; the
padding id is never sampled. An empty prompt starts from a newline, the separator between
documents in the training stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from esssm.batch import PAD
from esssm.layer import ESSSMLayer, check_budget
from esssm.model import LanguageModel
from esssm.ops.mixing import MixPlan, convolve_chunk
from esssm.spectral import fast_fft_size, fft_dtype, filter_spectra, padded_rfft

METHODS = ("futurefill", "naive")
Budget = int | None | Callable[[int], int]


# --------------------------------------------------------------------------- bytes and budgets


def encode(text: bytes) -> list[int]:
    """Token ids of a byte string (byte b -> id b + 1; id 0 is padding)."""
    return [b + 1 for b in text]


def decode(ids: Sequence[int]) -> bytes:
    """The byte string of token ids (the inverse of `encode`)."""
    return bytes(i - 1 for i in ids)


def parse_schedule(text: str, k_max: int) -> Callable[[int], int]:
    """'32,4@600,16@900' -> position -> budget: 32 from position 0, 4 from 600, 16 from 900.

    Positions count every byte of the sequence (prompt included); the budget of position t is
    the one of the forward pass that predicts byte t + 1.
    """
    starts: list[tuple[int, int]] = []
    for item in text.split(","):
        budget, _, start = item.strip().partition("@")
        try:
            entry = (int(start) if start else 0, int(budget))
        except ValueError:
            raise ValueError(
                f"budget schedule entries are K or K@POSITION (e.g. '32,4@600'), got {item!r}"
            ) from None
        check_budget(entry[1], k_max)
        starts.append(entry)
    if not starts or starts[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(starts, starts[1:])):
        raise ValueError(
            f"a budget schedule starts with a budget for position 0 and lists increasing "
            f"positions, e.g. '32,4@600,16@900'; got {text!r}"
        )

    def budget_at(position: int) -> int:
        return next(k for start, k in reversed(starts) if position >= start)

    return budget_at


def budget_function(budget: Budget, k_max: int) -> Callable[[int], int]:
    """position -> budget from an int, None (k_max) or a function; every value is checked."""
    if callable(budget):
        return lambda t: check_budget(budget(t), k_max)
    k = check_budget(budget, k_max)
    return lambda t: k


# --------------------------------------------------------------------------- sampling


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (B,) from logits (B, V): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k ids. The padding id is excluded."""
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"temperature must be >= 0 and top_k >= 1, got {temperature}, {top_k}")
    logits = logits.float().clone()
    logits[:, PAD] = -math.inf
    if temperature == 0:
        return logits.argmax(-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------- mixers


@contextmanager
def replaced_mixers(
    model: nn.Module, make: Callable[[nn.Module], nn.Module], kind: type = ESSSMLayer
) -> Iterator[list]:
    """Within the block, every submodule of type `kind` is replaced by `make(module)`; yields
    the replacements in model order and restores the originals on exit."""
    slots = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]
    replacements = [make(layer) for _, _, layer in slots]
    try:
        for (parent, name, _), new in zip(slots, replacements):
            setattr(parent, name, new)
        yield replacements
    finally:
        for parent, name, layer in slots:
            setattr(parent, name, layer)


def budget_forward(layer: ESSSMLayer, u: torch.Tensor, budgets: Sequence[int]) -> torch.Tensor:
    """The layer's output (B, L, D) with budget budgets[t] at position t, u (B, L, D).

    The layer is causal, so its output at t at budget k depends only on u(<= t) and k: the
    rows of the layer's own forward at each distinct budget are gathered by position.
    """
    distinct = sorted(set(budgets))
    if len(distinct) == 1:
        return layer(u, budget=distinct[0])
    index = torch.tensor([distinct.index(k) for k in budgets], device=u.device)
    outs = torch.stack([layer(u, budget=k) for k in distinct])  # (K, B, L, D)
    return outs[index, :, torch.arange(len(budgets), device=u.device)].transpose(0, 1)


class ScheduledMixer(nn.Module):
    """An ESSSMLayer run with per-position budgets (`budgets`, set before each forward pass)."""

    def __init__(self, layer: ESSSMLayer) -> None:
        super().__init__()
        self.layer, self.budgets = layer, [layer.k_max]

    def forward(
        self, u: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        return budget_forward(self.layer, u, self.budgets[: u.shape[1]])


class FutureFillMixer(nn.Module):
    """Incremental ESSSMLayer for inputs arriving a few positions at a time (B, n, D).

    State, float32 (float64 for a float64 model):
      history (B, H, D): the layer inputs u seen so far; H = horizon.
      cache (B, c, D, H - base): for channels 1..c and positions q >= base (where the cache was
        last built), the sum over already-added pairs (s, q), s < q, of phi_j(q - s) u(s);
        complete at q when q is reached. It spans the generated positions only, not the prompt.
    Set `budgets` (one per new position) before each forward pass.
    """

    def __init__(self, layer: ESSSMLayer, batch: int, horizon: int, dtype: torch.dtype) -> None:
        super().__init__()
        if horizon > layer.seq_len:
            raise ValueError(f"horizon {horizon} exceeds the layer's seq_len={layer.seq_len}")
        self.layer, self.horizon, self.budgets = layer, horizon, [layer.k_max]
        self.dtype = fft_dtype(dtype)
        device = layer.phi.device
        self.history = torch.zeros(batch, horizon, layer.d_model, dtype=self.dtype, device=device)
        self.cache = self.history.new_zeros(batch, 0, layer.d_model, horizon)
        self.t = self.base = 0  # positions consumed; where the cache was last built
        self._spectra: dict[tuple[int, int], torch.Tensor] = {}

    def cache_bytes(self) -> int:
        """Bytes held by the history and the cache (what this layer keeps between bytes)."""
        return sum(x.numel() * x.element_size() for x in (self.history, self.cache))

    def forward(
        self, u: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        """Outputs (B, n, D) of the n new positions u (B, n, D); `mask` and `budget` are unused
        (the layer is causal; `budgets` holds the per-position budgets)."""
        n = u.shape[1]
        if self.t + n > self.horizon:
            raise ValueError(f"position {self.t + n} is beyond the horizon {self.horizon}")
        if n > 1:  # a prompt: the layer's own forward over the history, the cache rebuilt later
            self.history[:, self.t : self.t + n] = u.to(self.dtype)
            out = budget_forward(self.layer, self.history[:, : self.t + n].to(u.dtype), self.budgets)
            self.t += n
            self.cache = self.cache[:, :0]
            return out[:, -n:]
        k = self.budgets[0]
        if self.cache.shape[1] < k:
            self._rebuild(k)
        if self.cache.shape[1] > k:  # channels beyond the budget are dropped: cost follows k
            self.cache = self.cache[:, :k].clone()
        self.history[:, self.t] = u[:, 0].to(self.dtype)
        out = self._output(u, k)
        self.t += 1
        n = self.t - self.base
        size = n & -n  # the largest power of two dividing n
        self._future_fill(self.t - size, min(size, self.horizon - self.t), k)
        return out

    def _output(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """Layer output (B, 1, D) at position t from the cache plus the tap phi(0) u(t)."""
        layer = self.layer
        u_t = u[:, 0, None].to(self.dtype)  # (B, 1, D)
        conv = self.cache[:, :, :, self.t - self.base] + layer.phi[0, :k, None].to(self.dtype) * u_t
        weights = layer.mixing_weights(u, k).to(self.dtype)  # (B, 1, k)
        weighted = (conv * weights[:, 0, :, None]).reshape(u.shape[0], 1, -1)  # (B, 1, k*D)
        mixed = weighted @ layer.mix[:k].reshape(-1, layer.d_model).to(self.dtype)
        return layer.skip(u) + mixed.to(u.dtype)

    def _rebuild(self, k: int) -> None:
        """A cache for channels 1..k from position t on, holding the contribution of every
        input so far (the prompt, or the history when the budget rises); blocks restart here."""
        batch, horizon, d = self.history.shape
        self.cache = self.history.new_zeros(batch, k, d, horizon - self.t)
        self.base = self.t
        if self.t > 0:
            self._future_fill(0, horizon - self.t, k)

    def _future_fill(self, start: int, length: int, k: int) -> None:
        """FutureFill: add the contribution of the inputs at [start, t) to positions
        [t, t + length) of the cache, channels 1..k, with one FFT per signal.

        The i-th future position gets sum_r phi(n + i - r) u(start + r), n = t - start: a
        circular convolution of size N >= n + length with phi rolled by -n puts it in the
        first `length` outputs (`_shifted_spectra`).
        """
        if length <= 0:
            return
        inputs = self.history[:, start : self.t]  # (B, n, D)
        n = inputs.shape[1]
        nfft = fast_fft_size(n + length)
        spectra = self._shifted_spectra(n, nfft)
        plan = MixPlan.for_input(inputs.shape, k, nfft, self.dtype, device_type=inputs.device.type)
        u_hat = padded_rfft(inputs.transpose(1, 2), nfft).unsqueeze(1)
        offset = self.t - self.base
        for first in range(0, k, plan.chunk):
            last = min(k, first + plan.chunk)
            part = inputs.new_empty(inputs.shape[0], last - first, inputs.shape[2], length)
            convolve_chunk(u_hat, spectra[first:last], None, plan, part, None)
            self.cache[:, first:last, :, offset : offset + length] += part

    def _shifted_spectra(self, shift: int, nfft: int) -> torch.Tensor:
        """Spectra (k_max, nfft // 2 + 1) of phi zero-padded to nfft and rolled by -shift:
        circular lag j in (-shift, nfft - shift) then reads tap phi(j + shift). Taps past
        seq_len only reach positions past the horizon, so they are zero here."""
        key = (shift, nfft)
        spectra = self._spectra.get(key)
        if spectra is None:
            phi = self.layer.phi[:nfft].to(self.dtype)
            phi = torch.nn.functional.pad(phi, (0, 0, 0, nfft - phi.shape[0]))
            spectra = filter_spectra(torch.roll(phi, -shift, dims=0), nfft)
            self._spectra[key] = spectra
        return spectra


# --------------------------------------------------------------------------- generation


@dataclass
class Generation:
    """ids (B, P + N) of prompt and new bytes; logits (B, N, V) that chose each new byte;
    cache_bytes: the FutureFill state at the end (0 for naive)."""

    ids: torch.Tensor
    logits: torch.Tensor
    prompt_length: int
    cache_bytes: int = 0

    def text(self, row: int = 0, include_prompt: bool = True) -> bytes:
        start = 0 if include_prompt else self.prompt_length
        return decode(self.ids[row, start:].tolist())


def scheduled_logits(model: LanguageModel, ids: torch.Tensor, budget: Budget = None) -> torch.Tensor:
    """Logits (B, L, V) of ids (B, L) with the budget of each position from `budget` (the
    per-position budget forward: at position t every ES-SSM layer uses k(t) channels)."""
    k_max = lm_k_max(model)
    budgets = [budget_function(budget, k_max)(t) for t in range(ids.shape[1])]
    if len(set(budgets)) == 1:
        return model(ids, budget=budgets[0])
    with replaced_mixers(model, ScheduledMixer) as mixers:
        for mixer in mixers:
            mixer.budgets = budgets
        return model(ids, budget=max(budgets))


def lm_k_max(model: nn.Module) -> int:
    """The language model's k_max, or a clear error for anything else."""
    if not isinstance(model, LanguageModel):
        raise ValueError(f"generation needs a byte-level LanguageModel (objective 'lm'), got {type(model).__name__}")
    if model.k_max is None or not any(isinstance(m, ESSSMLayer) for m in model.modules()):
        raise ValueError(
            f"budgeted generation needs an ES-SSM backbone, got {type(model.backbone).__name__}"
        )
    return model.k_max


def check_length(model: LanguageModel, prompt_length: int, max_new: int) -> None:
    """Refuse a text longer than the model's context window seq_len."""
    seq_len = model.backbone.seq_len
    if prompt_length + max_new > seq_len:
        raise ValueError(
            f"prompt ({prompt_length} bytes) + max_new_bytes ({max_new}) = {prompt_length + max_new} "
            f"exceeds the model's seq_len={seq_len}: its spectral filters have {seq_len} taps and it "
            f"never saw a longer context. Shorten the prompt or ask for at most "
            f"{max(0, seq_len - prompt_length)} new bytes."
        )


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: bytes | torch.Tensor,
    max_new: int,
    budget: Budget = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    method: str = "futurefill",
) -> Generation:
    """Generate `max_new` bytes after `prompt` (bytes, or ids (B, P) for a batch).

    budget: an int (every position), None (k_max) or position -> budget (see the module doc).
    temperature 0 is greedy; sampling draws from a torch.Generator seeded with `seed`.
    The model is put in eval mode (dropout off) and left there.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if max_new < 0:
        raise ValueError(f"max_new must be >= 0, got {max_new}")
    budget_at = budget_function(budget, lm_k_max(model))
    ids = _prompt_ids(prompt, model)
    check_length(model, ids.shape[1], max_new)
    model.eval()
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    step = _futurefill_steps if method == "futurefill" else _naive_steps
    return step(model, ids, max_new, budget_at, lambda x: sample_next(x, temperature, top_k, gen))


def _prompt_ids(prompt: bytes | torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = model.head.weight.device
    if isinstance(prompt, torch.Tensor):
        return prompt.to(device)
    return torch.tensor([encode(prompt or b"\n")], device=device)


def _naive_steps(model, ids, max_new, budget_at, pick) -> Generation:
    """The reference: the whole sequence through the model for every new byte."""
    prompt_length, chosen = ids.shape[1], []
    for _ in range(max_new):
        logits = scheduled_logits(model, ids, budget_at)[:, -1]
        chosen.append(logits)
        ids = torch.cat([ids, pick(logits)[:, None]], dim=1)
    return Generation(ids, _stack(chosen, ids, model), prompt_length)


def _futurefill_steps(model, ids, max_new, budget_at, pick) -> Generation:
    """The prompt through the model once, then one position per byte on the FutureFill caches."""
    prompt_length, chosen = ids.shape[1], []
    horizon = prompt_length + max_new - 1  # the last new byte is never fed back
    if max_new == 0:
        return Generation(ids, _stack(chosen, ids, model), prompt_length)
    dtype = model.head.weight.dtype

    with replaced_mixers(model, lambda layer: FutureFillMixer(layer, ids.shape[0], horizon, dtype)) as mixers:
        fed = ids
        for position in range(prompt_length, prompt_length + max_new):
            start = position - fed.shape[1]
            budgets = [budget_at(t) for t in range(start, position)]
            for mixer in mixers:
                mixer.budgets = budgets
            logits = model(fed, budget=max(budgets))[:, -1]
            chosen.append(logits)
            fed = pick(logits)[:, None]
            ids = torch.cat([ids, fed], dim=1)
        cache_bytes = sum(m.cache_bytes() for m in mixers)
    return Generation(ids, _stack(chosen, ids, model), prompt_length, cache_bytes)


def _stack(chosen: list[torch.Tensor], ids: torch.Tensor, model: LanguageModel) -> torch.Tensor:
    if chosen:
        return torch.stack(chosen, dim=1)
    return ids.new_zeros(ids.shape[0], 0, model.head.out_features, dtype=torch.float32)
