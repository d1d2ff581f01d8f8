"""Baseline backbones with ES-SSM's interface: `backbone(x, mask=None, budget=None) -> (B, L, D)`.

Each is a `esssm.model.SequenceBackbone`, so a config swaps one in for ES-SSM
(`model.backbone: {class_path: baselines.mamba.Mamba, init_args: {...}}`), and
`baselines.sizing.match_width` sizes it to a target parameter count.
"""

from baselines.mamba import Mamba
from baselines.mamba2 import Mamba2
from baselines.s4d import S4D
from baselines.sizing import match_width
from baselines.stu import ARSTU, FixedSpectralSSM
from baselines.transformer import Transformer

__all__ = ["ARSTU", "FixedSpectralSSM", "Mamba", "Mamba2", "S4D", "Transformer", "match_width"]
