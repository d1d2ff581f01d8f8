"""The ONNX export of a truncated ES-SSM model in onnxruntime against the same model in PyTorch.

    python -m benchmarks.bench_onnx --threads 1 --json onnx_cpu_1t.json   # the docs/benchmarks.md table
    python -m benchmarks.bench_onnx --lengths 256 --budgets 1,8 --toeplitz-max-len 256   # smoke run

Model: one ES-SSM block (d_model 256, k_max 32, byte-sized vocabulary, classification head) built
for seq_len = L, truncated to each budget k and exported with `esssm.infer.export_onnx`; batch 1
at the full length. Per (L, k), timed in interleaved rounds: the median CPU time of the process
per call (`*_ms`; with one thread, what a call takes on a core of its own however loaded the
machine is) and the median wall time (`*_wall_ms`), of:

- torch: the model at budget k in PyTorch (the fast kernel);
- torch, export form: `onnx_copy` of the truncated model in PyTorch (what the graph computes);
- onnxruntime: the exported file (convolutions by `MatmulConvolution`, a two-stage DFT as real
  matmuls);
- onnxruntime, DFT op: the same graph with torch.fft.rfft/irfft, which the exporter lowers to the
  ONNX DFT op (complex products in real arithmetic);
- onnxruntime, Toeplitz: each convolution a matmul against the (L, k L) matrix of filter taps (no
  DFT; O(k L^2) per feature, and the file holds k L^2 floats, so only up to --toeplitz-max-len);
- onnxruntime, elastic: one file of the whole model (k_max) with k as its `budget` input
  (`esssm export --format onnx --elastic`), run at k.

The relative errors (max |onnx - torch| / max |torch|) of the ONNX forms are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from benchmarks.timing import machine_info, parse_ints
from esssm import infer
from esssm.files import atomic_write_text
from esssm.infer import onnx as deploy_onnx
from esssm.model import ESSSM, module_spec
from esssm.spectral import filter_spectra
from esssm.timing import time_once


class DftOpConvolution(nn.Module):
    """`MatmulConvolution`'s job by rfft/irfft: the ONNX DFT op in the exported graph."""

    def __init__(self, phi: torch.Tensor, nfft: int) -> None:
        super().__init__()
        self.nfft = nfft
        self.register_buffer("spectra", torch.view_as_real(filter_spectra(phi, nfft)).contiguous(), persistent=False)

    def forward(self, u: torch.Tensor, k: int) -> torch.Tensor:
        u_hat = torch.view_as_real(torch.fft.rfft(u.transpose(1, 2), n=self.nfft, dim=-1)).unsqueeze(1)
        u_re, u_im = u_hat[..., 0], u_hat[..., 1]  # (B, 1, D, F)
        s_re, s_im = self.spectra[:k, None, :, 0], self.spectra[:k, None, :, 1]  # (k, 1, F)
        product = torch.stack([u_re * s_re - u_im * s_im, u_re * s_im + u_im * s_re], dim=-1)
        return torch.fft.irfft(torch.view_as_complex(product), n=self.nfft, dim=-1)[..., : u.shape[1]]


class ToeplitzConvolution(nn.Module):
    """`MatmulConvolution`'s job as u (B, D, L) @ taps (L, k L), taps[s, j L + t] = phi_j[t - s]."""

    def __init__(self, phi: torch.Tensor, nfft: int) -> None:
        super().__init__()
        n = phi.shape[0]
        lag = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # t - s
        taps = phi.t()[:, lag.clamp_min(0)] * (lag >= 0)  # (k, L_s, L_t), causal
        self.register_buffer("taps", taps.permute(1, 0, 2).contiguous(), persistent=False)  # (L_s, k, L_t)

    def forward(self, u: torch.Tensor, k: int) -> torch.Tensor:
        length = u.shape[1]
        conv = u.transpose(1, 2) @ self.taps[:length, :k, :length].reshape(length, k * length)  # (B, D, k*L)
        return conv.unflatten(-1, (k, length)).transpose(1, 2)  # (B, k, D, L)


FORMS = {"onnxruntime": None, "onnxruntime_dft_op": DftOpConvolution, "onnxruntime_toeplitz": ToeplitzConvolution}


def model_and_config(length: int, d_model: int, k_max: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    backbone = ESSSM(d_model=d_model, n_layers=1, seq_len=length, k_max=k_max, dropout=0.0, drop_path=0.0)
    config = {"backbone": module_spec(backbone), "num_classes": 10, "vocab_size": 257, "input_dim": None,
              "task": "classification"}
    return infer.build_model(config).eval(), config


def exported(model, config, budget: int, folder: str, form: str) -> deploy_onnx.OnnxModel:
    """The budget's ONNX file in an onnxruntime session, its convolutions by `form`."""
    path = Path(folder) / f"k{budget}_{form}.onnx"
    with mock.patch.object(deploy_onnx, "MatmulConvolution", FORMS[form] or deploy_onnx.MatmulConvolution):
        infer.export_onnx(*infer.truncate(model, config, budget), path)
    return infer.load_onnx(path, threads=torch.get_num_threads())


def measure(model, config, elastic: deploy_onnx.OnnxModel, budget: int, args, folder: str) -> dict:
    length = config["backbone"]["init_args"]["seq_len"]
    batch = infer.synthetic_batch(config, 1, length)
    with torch.no_grad():
        expected = infer.batch_logits(model, batch, budget)
    export_form = deploy_onnx.onnx_copy(infer.truncate(model, config, budget)[0])
    calls = {
        "torch": lambda: infer.batch_logits(model, batch, budget),
        "torch_export_form": lambda: infer.batch_logits(export_form, batch),
    }
    row = {"length": length, "budget": budget}
    for form in FORMS:
        if form == "onnxruntime_toeplitz" and length > args.toeplitz_max_len:
            continue
        onnx_model = exported(model, config, budget, folder, form)
        row[f"{form}_rel_error"] = infer.relative_error(onnx_model(batch), expected)
        calls[form] = lambda m=onnx_model, feeds=onnx_model.feeds(batch): m.session.run(None, feeds)
    row["onnxruntime_elastic_rel_error"] = infer.relative_error(elastic(batch, budget), expected)
    calls["onnxruntime_elastic"] = lambda feeds=elastic.feeds(batch, budget): elastic.session.run(None, feeds)
    wall, cpu = {name: [] for name in calls}, {name: [] for name in calls}
    with torch.inference_mode():
        for r in range(args.warmup + args.repeats):
            for name, call in calls.items():
                start = time.process_time()
                ms = time_once(call)
                if r >= args.warmup:
                    wall[name].append(ms)
                    cpu[name].append((time.process_time() - start) * 1000.0)
    row.update({f"{name}_ms": statistics.median(t) for name, t in cpu.items()})
    row.update({f"{name}_wall_ms": statistics.median(t) for name, t in wall.items()})
    return row


def table(rows: list[dict]) -> str:
    columns = [("torch_ms", "torch ms"), ("torch_export_form_ms", "torch, export form ms"),
               ("onnxruntime_ms", "onnxruntime ms"), ("onnxruntime_rel_error", "rel. error"),
               ("onnxruntime_dft_op_ms", "DFT op ms"), ("onnxruntime_dft_op_rel_error", "DFT op rel. error"),
               ("onnxruntime_toeplitz_ms", "Toeplitz ms"), ("onnxruntime_toeplitz_rel_error", "Toeplitz rel. error"),
               ("onnxruntime_elastic_ms", "elastic ms"), ("onnxruntime_elastic_rel_error", "elastic rel. error")]
    lines = ["| L | k | " + " | ".join(title for _, title in columns) + " |", "|---" * (2 + len(columns)) + "|"]
    for r in rows:
        cells = [f"{r[key]:.3g}" if key in r else "" for key, _ in columns]
        lines.append(f"| {r['length']} | {r['budget']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=parse_ints, default=[1024, 4096])
    parser.add_argument("--budgets", type=parse_ints, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--k-max", type=int, default=32)
    parser.add_argument("--toeplitz-max-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="write the rows here (under docs/benchmarks_data/ unless a path)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for length in args.lengths:
            model, config = model_and_config(length, args.d_model, args.k_max)
            path = Path(folder) / f"L{length}_elastic.onnx"
            infer.export_onnx(model, config, path, elastic=True)
            elastic = infer.load_onnx(path, threads=args.threads)
            for budget in args.budgets:
                rows.append(measure(model, config, elastic, budget, args, folder))
                print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json:
        path = Path(args.json) if os.sep in args.json else Path("docs/benchmarks_data") / args.json
        info.update(loadavg_end=os.getloadavg(), args=vars(args))
        atomic_write_text(path, json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
