"""The spectral-mixing operation of ESSSMLayer: a fast kernel and its plain reference.

- `mixing`: the kernel (plan, autograd function, blocked FFTs feeding chunked GEMMs);
- `reference`: the same formula in a few plain lines (a layer with `ESSSMSettings(fast=False)` uses it);
- `gemm`: CPU float32 GEMMs through oneDNN, behind the `gemm.set_onednn` switch.
"""

from esssm.ops.mixing import MixPlan, spectral_mixing
from esssm.ops.reference import reference_mixing

__all__ = ["MixPlan", "reference_mixing", "spectral_mixing"]
