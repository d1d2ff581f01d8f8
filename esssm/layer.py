"""The elastic spectral SSM layer: one trained layer, evaluated at any budget k <= k_max."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esssm.spectral import causal_fft_conv, fast_fft_size, filter_spectra, fft_dtype, spectral_filters


def check_budget(budget: int | None, k_max: int) -> int:
    """Resolve a runtime budget: None means k_max; anything outside [1, k_max] is an error."""
    if budget is None:
        return k_max
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= k_max:
        raise ValueError(
            f"budget must be an int in [1, {k_max}] (or None for the full k_max={k_max}), "
            f"got {budget!r}"
        )
    return budget


class ESSSMLayer(nn.Module):
    """ES-SSM sequence mixer (DESIGN.md section 1), input and output (B, L, D).

    y(t) = sum_{j <= k} alpha_j(t) sigma_j^(1/4) M_j (phi_j * u)(t) + D_skip u(t), where alpha is a
    softmax over the active prefix of RMS-rescaled gate logits. Only channels 1..k are computed,
    so time, memory and gradients of a pass at budget k touch nothing beyond channel k.

    The mixing matrices are stored transposed, `mix[j] = M_j^T` of shape (D_in, D_out), so the
    active prefix `mix[:k]` reshapes to one (k*D, D) GEMM operand without a copy.
    """

    def __init__(
        self,
        d_model: int,
        seq_len: int,
        k_max: int = 32,
        gate: bool = True,
        rms_rescale: bool = True,
        gate_bias_init: float = -2.0,
        mix_init_std: float = 1e-3,
        channel_chunk: int | None = None,
        eps: float = 1e-6,
        filter_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if d_model < 2:
            raise ValueError(f"d_model must be >= 2, got {d_model}")
        self.d_model, self.seq_len, self.k_max = d_model, seq_len, k_max
        self.gate, self.rms_rescale, self.eps = gate, rms_rescale, eps
        self.channel_chunk = channel_chunk or k_max
        sigma, phi = spectral_filters(seq_len, k_max, cache_dir=filter_cache_dir)
        # Persistent: a trained model never depends on recomputing the near-null-space filters.
        self.register_buffer("sigma", torch.from_numpy(sigma).float())
        self.register_buffer("phi", torch.from_numpy(phi).float())
        self.gate_in = nn.Linear(d_model, d_model // 2)
        self.gate_out = nn.Linear(d_model // 2, k_max)
        nn.init.constant_(self.gate_out.bias, gate_bias_init)
        self.mix = nn.Parameter(torch.randn(k_max, d_model, d_model) * mix_init_std)
        self.skip = nn.Linear(d_model, d_model, bias=False)
        self._spectra: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, seq_len={self.seq_len}, k_max={self.k_max}, "
            f"gate={self.gate}, rms_rescale={self.rms_rescale}"
        )

    def channel_weights(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """alpha (B, L, k): masked-softmax gate over the active prefix; rows sum to 1 at any k."""
        if not self.gate:
            return u.new_full((*u.shape[:2], k), 1.0 / k)
        hidden = F.gelu(self.gate_in(u))
        logits = F.linear(hidden, self.gate_out.weight[:k], self.gate_out.bias[:k])
        if self.rms_rescale:
            norm = logits.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            logits = logits * (math.sqrt(k) / norm)
        return logits.softmax(dim=-1)

    def spectra(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Spectra (k_max, F) of the filters cut to `length` taps, and their FFT size.

        Cut, because taps beyond the input length would wrap around into the kept outputs.
        Cached per (length, dtype) until the filters change (device move, load_state_dict).
        """
        nfft = fast_fft_size(2 * length - 1)
        key = (length, dtype, self.phi.device, self.phi.data_ptr(), self.phi._version)
        spectra = self._spectra.get(key)
        if spectra is None:
            self._spectra = {k: v for k, v in self._spectra.items() if k[2:] == key[2:]}
            spectra = filter_spectra(self.phi[:length].to(dtype), nfft)
            self._spectra[key] = spectra
        return spectra, nfft

    def forward(
        self, u: torch.Tensor, budget: int | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u (B, L, D) -> (B, L, D) at budget k. `mask` is unused: the layer is causal, so the
        right-padding that follows a sequence never reaches its valid positions."""
        k = check_budget(budget, self.k_max)
        self._check_input(u)
        spectra, nfft = self.spectra(u.shape[1], fft_dtype(u.dtype))
        weights = self.channel_weights(u, k) * self.sigma[:k].pow(0.25)  # (B, L, k)
        out = self.skip(u)
        for start in range(0, k, self.channel_chunk):
            stop = min(k, start + self.channel_chunk)
            out = out + self._mix_channels(u, weights, spectra, nfft, start, stop)
        return out

    def _mix_channels(
        self,
        u: torch.Tensor,
        weights: torch.Tensor,
        spectra: torch.Tensor,
        nfft: int,
        start: int,
        stop: int,
    ) -> torch.Tensor:
        """Channels [start, stop): convolve, weight per (t, channel), then one (c*D, D) GEMM."""
        batch, length, d = u.shape
        conv = causal_fft_conv(u, spectra[start:stop], nfft)  # (B, c, D, L)
        weighted = conv * weights[:, :, start:stop].transpose(1, 2).unsqueeze(2).to(conv.dtype)
        flat = weighted.reshape(batch, (stop - start) * d, length).transpose(1, 2)
        return flat.to(u.dtype) @ self.mix[start:stop].reshape(-1, d).to(u.dtype)

    def _check_input(self, u: torch.Tensor) -> None:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"ESSSMLayer expects input of shape (batch, length, d_model={self.d_model}), "
                f"got {tuple(u.shape)}"
            )
        if not 1 <= u.shape[1] <= self.seq_len:
            raise ValueError(
                f"input length {u.shape[1]} is outside [1, seq_len={self.seq_len}]: the filters "
                f"were built for seq_len={self.seq_len}; build the model with a larger seq_len"
            )

    def inactive_parameters(self, budget: int | None) -> int:
        """Parameters owned by channels beyond the budget (mixing matrices, gate output rows)."""
        k = check_budget(budget, self.k_max)
        per_channel = self.d_model * self.d_model + self.gate_out.in_features + 1
        return (self.k_max - k) * per_channel
