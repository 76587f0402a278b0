"""Heavy-tailed spectra (AlphaLoRA, WeightWatcher): the power-law exponent alpha of each weight matrix.

For every adaptable matrix W, the eigenvalues of W^T W (squared singular values) and a power-law fit
of their tail (see esd_fit): by default AlphaLoRA's own (`fix_finger`: xmin in a window around the
peak of the spectrum's histogram, no threshold), as its expert_number.py computes the alphas it
allocates by; `fit=ww` is WeightWatcher's default fit, and rows planned from it say so (variant).
value = alpha. Heavy-tailed self-regularisation reads a lower alpha as a better-trained matrix;
AlphaLoRA gives MORE adapter capacity to layers whose mean alpha is LARGER (less trained), so value
is the importance as it is.

Needs the weights only: no data, no gradients. Spectra are computed on the run's device in stacks
of equally shaped matrices; the fit runs in float64. Extra table "spectra": every eigenvalue, for the
ESD plots.

Plan (alpha_plan.py, AlphaLoRA's `exponential_scaling` with beta 2.5): each layer's share of
the budget is proportional to (mean alpha of its matrices) ** 2.5, and every adapted matrix of a
layer gets that layer's rank.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from analysis.signals.alpha.alpha_plan import ALPHALORA
from analysis.signals.alpha.esd_fit import fit_alphalora, fit_power_law, spectra
from analysis.contract.signal import Signal
from analysis.signals.registry import register
from analysis.contract.result import Result
from analysis.settings import SignalOptions

DTYPES = {"float32": torch.float32, "float64": torch.float64}
FITS = {"ww": fit_power_law, "alphalora": fit_alphalora}


@dataclass
class AlphaConfig(SignalOptions):
    svd_dtype: str = field(default="float32", metadata={"choices": tuple(DTYPES),
        "help": "precision of the singular values: float32 (fast on a GPU) or float64 (what WeightWatcher uses; "
                "slow on a GPU); the fit itself is always float64"})
    chunk: int = field(default=16, metadata={"minimum": 1,
                                             "help": "matrices of one shape per svdvals call (GPU memory)"})
    spectrum: str = field(default="svdvals", metadata={"choices": ("svdvals", "gram"),
        "help": "svdvals (squared singular values, as WeightWatcher) or gram (eigvalsh of the smaller Gram matrix: "
                "faster on a GPU, less accurate for the smallest eigenvalues in float32)"})
    fit: str = field(default="alphalora", metadata={"choices": tuple(FITS),
        "help": "alphalora (AlphaLoRA's own fix_finger: xmin in a window around the ESD's histogram peak, no "
                "threshold; what its allocation reads) or ww (WeightWatcher's default fit, the reference for the "
                "metric; plans from it are named as not AlphaLoRA's)"})


def compute(context, config: AlphaConfig) -> Result:
    modules = context.modules
    weights = [context.model.get_submodule(m.path).weight for m in modules]
    with torch.no_grad():
        evals = spectra(weights, DTYPES[config.svd_dtype], config.chunk, config.spectrum)
        fits = [FITS[config.fit](e) for e in evals]
    table = pd.DataFrame({"signal": "alpha", "layer": [m.layer for m in modules],
                          "module": [m.name for m in modules], "value": [f.alpha for f in fits],
                          "xmin": [f.xmin for f in fits], "D": [f.D for f in fits],
                          "sigma": [f.sigma for f in fits], "n_evals": [f.n_evals for f in fits],
                          "n_tail": [f.n_tail for f in fits]})
    table["degenerate"] = table["value"].isna()   # fewer than 2 eigenvalues above the threshold: no fit
    spectra_table = pd.DataFrame({
        "layer": [m.layer for m, e in zip(modules, evals) for _ in range(len(e))],
        "module": [m.name for m, e in zip(modules, evals) for _ in range(len(e))],
        "eigenvalue": torch.cat([e.double().cpu() for e in evals]).numpy()})
    return Result(table, tables={"spectra": spectra_table}, meta={"svd_dtype": config.svd_dtype, "fit": config.fit,
                                                                   "spectrum": config.spectrum})


def variant(config: dict) -> str:
    """Entries computed before the option existed used WeightWatcher's fit."""
    return "WeightWatcher's fit, not AlphaLoRA's" if config.get("fit", "ww") == "ww" else ""


def _exhibits(entry):
    from analysis.signals.alpha.alpha_figures import exhibits  # figures load plotly; registration stays light
    return exhibits(entry)


register(Signal(
    name="alpha", title="Heavy-tailed alpha (AlphaLoRA)",
    description="Power-law exponent of each weight matrix's eigenvalue spectrum (AlphaLoRA's fit; WeightWatcher's "
                "as an option); weights only. The plan gives layers with larger mean alpha more rank (AlphaLoRA).",
    config=AlphaConfig, compute=compute, version=1, plan=ALPHALORA, exhibits=_exhibits, variant=variant))
