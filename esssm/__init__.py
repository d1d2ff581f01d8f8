"""Elastic Spectral State Space Models: one spectral SSM, evaluated at any budget k <= k_max.

The method is plain torch and lives at the top of this package:

- `esssm.spectral`: the Hankel filters (float64 eigenpairs, deterministic, cached) and the causal
  FFT convolution;
- `esssm.layer`: `ESSSMLayer`, the elastic mixer, and its settings (`ESSSMSettings`);
- `esssm.ops`: the spectral-mixing kernel beside its plain reference;
- `esssm.model`: the backbone, pooling and the heads;
- `esssm.objectives`: what each objective (classification, retrieval, lm) predicts and scores;
- `esssm.budget`: the budget-dropout sampler and budget-curve summaries;
- `esssm.batch`: the batch contract shared with the datamodules.

Above it, each layer importing only the ones below: `esssm.train` (Lightning: the module, the
budget-sweep callback, the `lightning` command), `esssm.infer` (export, runtimes, planning,
cascades, generation) and `esssm.lab` (reproduce, smoke, tables and the `esssm` tools).

Names below are imported on first use, so `import esssm` (and every command's `--help`) stays cheap.
"""

from esssm.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BudgetSampler": "esssm.budget",
    "ESSSM": "esssm.model",
    "ESSSMLayer": "esssm.layer",
    "ESSSMSettings": "esssm.layer",
    "LanguageModel": "esssm.model",
    "RetrievalClassifier": "esssm.model",
    "SequenceBackbone": "esssm.model",
    "SequenceClassifier": "esssm.model",
    "SpectralSettings": "esssm.layer",
    "active_parameters": "esssm.model",
    "causal_fft_conv": "esssm.spectral",
    "check_budget": "esssm.layer",
    "get_objective": "esssm.objectives",
    "objective_model": "esssm.objectives",
    "spectral_filters": "esssm.spectral",
})
