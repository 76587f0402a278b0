"""End to end on the embedded SmolLM2 decoder: `python -m analysis show --signal cka` and `--signal id`
equal a computation from transformers' `hidden_states` (numpy float64 CKA, scikit-dimension TwoNN)."""
import math
from io import StringIO

import numpy as np
import pandas as pd
import pytest
import torch
from skdim.id import TwoNN

from analysis.settings import RunSettings
from analysis.signals.context import AnalysisContext, prepare
from analysis.store.cache import Store
from tests.conftest import reference_states, with_smollm2
from tests.model.test_decoder_states import numpy_cka
from tests.test_cli import cli

ARGS = ["--model", "smollm2", "--val-size", "32", "--device", "cpu"]


@pytest.mark.slow
def test_smollm2_cka_and_id_tables_equal_transformers_hidden_states(cache_dir, dequantized_smollm2):
    with_smollm2(cache_dir, dequantized_smollm2)
    run = cli(cache_dir, "run", "--signals", "cka,id", *ARGS)
    assert run.returncode == 0, run.stderr
    cka = pd.read_csv(StringIO(cli(cache_dir, "show", "--signal", "cka", *ARGS).stdout))
    ids = pd.read_csv(StringIO(cli(cache_dir, "show", "--signal", "id", *ARGS).stdout))
    context = AnalysisContext(prepare(RunSettings(model="smollm2", val_size=32, device="cpu"), Store(cache_dir)))
    with torch.no_grad():
        last = [s.numpy() for s in reference_states(context, "last", "train")]        # CKA: the paper's split
        mean = [s.numpy() for s in reference_states(context, "mean", "validation")]   # ID: validation
    expected = [1 - numpy_cka(last[i], last[i + 1]) for i in range(30)]
    np.testing.assert_allclose(cka["value"], expected, atol=1e-4)
    dims = [TwoNN(discard_fraction=0.1).fit(m).dimension_ for m in mean]
    np.testing.assert_allclose(ids["id_out"], dims[1:], rtol=1e-4)
    assert ids["value"].tolist() == [math.ceil(max(dims[i + 1] - dims[i], 0)) + 1 for i in range(30)]
