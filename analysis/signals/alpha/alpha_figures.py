"""alpha's figures: the layer x module heatmap of alpha, and the ESD of a matrix with its power-law fit
(log-log density, as WeightWatcher draws it), for the matrices with the largest and smallest alpha."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.charts import tidy_figures
from analysis.contract.exhibit import Exhibit


def esd_figure(spectra: pd.DataFrame, fits: pd.DataFrame, layer: int, module: str, title: str = "") -> go.Figure:
    """Histogram density of log-binned eigenvalues of one matrix, the fitted power law on x >= xmin
    (scaled by the tail's share of the eigenvalues, so it sits on the histogram) and xmin marked."""
    evals = spectra.loc[(spectra["layer"] == layer) & (spectra["module"] == module), "eigenvalue"].to_numpy()
    fit = fits.loc[(fits["layer"] == layer) & (fits["module"] == module)].iloc[0]
    positive = evals[evals > 1e-5]
    edges = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 60)
    counts, edges = np.histogram(positive, bins=edges)
    density = counts / (len(positive) * np.diff(edges))
    centres = np.sqrt(edges[:-1] * edges[1:])
    # Scatter traces only: bar widths and shapes are not placed in data units on log axes.
    figure = go.Figure(go.Scatter(x=centres[density > 0], y=density[density > 0], mode="lines+markers",
                                  line={"color": "#3b528b", "shape": "hvh"}, marker={"size": 4}, name="ESD",
                                  hovertemplate="λ %{x:.3g}<br>density %{y:.3g}<extra></extra>"))
    alpha, xmin = float(fit["value"]), float(fit["xmin"])
    if np.isfinite(alpha):
        x = np.logspace(np.log10(xmin), np.log10(positive.max()), 100)
        share = float(fit["n_tail"]) / len(positive)
        line = share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        figure.add_trace(go.Scatter(x=x, y=line, mode="lines", line={"color": "#d62728", "width": 2},
                                    name=f"power law, alpha = {alpha:.2f}"))
        low, high = density[density > 0].min(), density.max()
        figure.add_trace(go.Scatter(x=[xmin, xmin], y=[low, high], mode="lines", name=f"xmin = {xmin:.3g}",
                                    line={"color": "#d62728", "dash": "dash", "width": 1}))
    figure.update_layout(title=title or f"ESD of layer {layer} {module}: alpha {alpha:.2f}, D {float(fit['D']):.3f}",
                         xaxis={"title": "eigenvalue λ of WᵀW", "type": "log"},
                         yaxis={"title": "density", "type": "log"},
                         margin={"l": 60, "r": 20, "t": 50, "b": 60}, height=380,
                         legend={"x": 0.02, "y": 0.02})
    return figure


FIT_NAMES = {"alphalora": "AlphaLoRA's fit", "ww": "WeightWatcher's fit"}


def exhibits(entry) -> list[Exhibit]:
    table = entry.table
    fit = FIT_NAMES[entry.meta.get("fit", "ww")]   # entries from before the option used WeightWatcher's
    found = [Exhibit("alpha_modules", f"Heavy-tailed alpha per layer and module ({fit})", table,
                     lambda: tidy_figures.module_heatmap(table()[["signal", "layer", "module", "value"]],
                                                    "alpha per layer and module", "alpha"))]
    fits = table()
    scored = fits.dropna(subset=["value"])
    if len(scored) and "spectra" in entry.table_names:
        for label, row in (("largest", scored.loc[scored["value"].idxmax()]),
                           ("smallest", scored.loc[scored["value"].idxmin()])):
            layer, module = int(row["layer"]), str(row["module"])
            found.append(Exhibit(f"alpha_esd_{label}", f"ESD and {fit} of the matrix with the {label} alpha "
                                 f"(layer {layer} {module})",
                                 lambda layer=layer, module=module: _one(entry, layer, module),
                                 lambda layer=layer, module=module: esd_figure(entry.table("spectra"), table(),
                                                                               layer, module)))
    return found


def _one(entry, layer: int, module: str) -> pd.DataFrame:
    spectra = entry.table("spectra")
    return spectra[(spectra["layer"] == layer) & (spectra["module"] == module)].reset_index(drop=True)
