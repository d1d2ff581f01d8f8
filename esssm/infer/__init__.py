"""Inference from a trained model, in plain torch (no Lightning): budgeted deployment, and
byte generation from the language model (`esssm.infer.generate`, FutureFill).

- `export`: a standalone file holding channels 1..k only, checked against the full model;
  a TorchScript copy;
- `plan`: the most accurate budget meeting a latency target on this machine;
- `cascade`: anytime inference, escalating low-confidence inputs to larger budgets;
- `model`: the task's model rebuilt from a config, and synthetic example batches;
- `onnx`: the truncated model as an ONNX file, checked in onnxruntime against PyTorch;
- `pt2`: the truncated model as an AOTInductor package, checked against PyTorch.

The command-line glue (`esssm export | plan | cascade`) is in esssm/lab/commands.py.
"""

from esssm.infer.cascade import CascadeResult, cascade_predict, cascade_sweep, evaluate_policy, format_cascade
from esssm.infer.export import (
    EXPORT_FORMAT,
    check_targets,
    example_seq_len,
    export_checked,
    export_torchscript,
    format_export,
    load_exported,
    load_torchscript,
    reference_copy,
    save_exported,
    state_bytes,
    torchscript_path,
    truncate,
    truncated_state_dict,
)
from esssm.infer.model import (
    batch_logits, build_model, elastic_k_max, model_config, relative_error, synthetic_batch, to_device,
)
from esssm.infer.onnx import OnnxModel, export_onnx, export_onnx_checked, format_onnx_export, load_onnx
from esssm.infer.plan import (
    RUNTIMES,
    CurvePoint,
    PlanRow,
    budget_forwards,
    curve_for,
    curve_name,
    format_plan,
    measure_latencies,
    plan_budget,
    read_curve,
    time_budgets,
    torch_forwards,
)
from esssm.infer.pt2 import Pt2Runner, export_pt2, export_pt2_checked, format_pt2_export, load_pt2

__all__ = [
    "EXPORT_FORMAT", "RUNTIMES", "CascadeResult", "CurvePoint", "OnnxModel", "PlanRow", "Pt2Runner", "batch_logits",
    "budget_forwards", "build_model", "cascade_predict", "cascade_sweep", "check_targets", "curve_for", "curve_name",
    "elastic_k_max", "evaluate_policy", "example_seq_len", "export_checked", "export_onnx", "export_onnx_checked",
    "export_pt2", "export_pt2_checked", "export_torchscript", "format_cascade", "format_export", "format_onnx_export",
    "format_plan", "format_pt2_export", "load_exported", "load_onnx", "load_pt2", "load_torchscript", "measure_latencies", "model_config", "plan_budget", "read_curve",
    "reference_copy", "relative_error", "save_exported", "state_bytes", "synthetic_batch", "time_budgets", "to_device", "torch_forwards",
    "torchscript_path", "truncate", "truncated_state_dict",
]
