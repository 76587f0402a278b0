"""An exhibit: one figure or table by name, with the data behind it, built only when asked for.

What a signal's figures hook returns, what the pages draw and what the Export page and `python -m analysis
export` write (reporting/exhibits.py lists a run's exhibits and renders them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
import plotly.graph_objects as go


@dataclass(frozen=True)
class Exhibit:
    name: str                                            # file stem: shapley_modules, cka_matrix, ...
    title: str
    data: Callable[[], pd.DataFrame]                     # the CSV behind it
    figure: Callable[[], go.Figure] | None = None        # None: a table only (CSV and LaTeX)
