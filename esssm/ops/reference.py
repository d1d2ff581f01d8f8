"""The spectral mixing of an ES-SSM layer written plainly: the readable reference of the kernel.

    mixed(t) = sum_{j <= k} w_j(t) M_j (phi_j * u)(t)

(docs/design.md section 1; w_j = alpha_j sigma_j^(1/4) comes from the layer's gate). Every
convolution and every per-channel projection is materialised, so memory is O(B k D L): fine for
tests, TorchScript export (torch.jit.trace records it) and the benchmarks' naive yardstick,
not for training at paper scale, which `esssm.ops.mixing.spectral_mixing` does in blocks.
"""

from __future__ import annotations

import torch

from esssm.spectral import causal_fft_conv


def reference_mixing(
    u: torch.Tensor, weights: torch.Tensor, mix: torch.Tensor, spectra: torch.Tensor, nfft: int
) -> torch.Tensor:
    """u (B, L, D); weights (B, L, k); mix (k, D_in, D_out) = M^T; spectra (k, F) -> (B, L, D)."""
    conv = causal_fft_conv(u, spectra, nfft).to(u.dtype)  # (B, k, D, L): (phi_j * u)(t)
    projected = torch.stack(  # (B, L, k, D): M_j (phi_j * u)(t), channel by channel
        [torch.einsum("bdl,de->ble", conv[:, j], mix[j]) for j in range(mix.shape[0])], dim=2
    )
    return (projected * weights.unsqueeze(-1)).sum(dim=2)
