"""Plan files: the peft part loads with peft's own loaders without a warning and builds exactly the planned ranks
and alphas; our part rides beside it; flat files written before the split still read, to the same retrain key."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from analysis.model.layout import layout_of
from analysis.planning.plan_json import build_plan, plan_file, read_plan, write_plan
from analysis.settings import PlanOptions, TrainSettings
from tests.conftest import tiny_llama
from tests.planning.test_allocate import tiny_bert


def _ranks(layout):
    """Three ranks, the commonest (2) first: rank_pattern and alpha_pattern both have entries."""
    return np.array([[2, 2, 4, 1][i % 4] for i in range(len(layout.modules))])


@pytest.fixture(params=["bert", "llama"])
def model_and_layout(request):
    model = tiny_bert() if request.param == "bert" else tiny_llama(layers=2)
    return model, layout_of(model)


def _loaded_without_warnings(load):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load()
    assert [str(w.message) for w in caught] == []
    return config


@pytest.mark.parametrize("rslora", [False, True])
def test_the_peft_part_loads_in_peft_silently_with_exact_ranks_and_alphas(model_and_layout, tmp_path, rslora):
    from peft import LoraConfig, PeftConfig, get_peft_model
    model, layout = model_and_layout
    ranks = _ranks(layout)
    plan = build_plan(layout, ranks, "test", 10**6, PlanOptions(alpha_ratio=2.0, rslora=rslora),
                      settings={"val_size": 16})
    write_plan(plan, tmp_path / "plan.json")
    written = json.loads((tmp_path / "plan.json").read_text())
    assert set(written) == {"peft", "analysis"}
    assert written["analysis"]["signal"] == "test" and written["analysis"]["settings"] == {"val_size": 16}
    assert "alpha_pattern" in written["peft"]
    # peft's loaders: from the dict, and from a folder holding it as adapter_config.json
    from_dict = _loaded_without_warnings(lambda: PeftConfig.from_peft_type(**written["peft"]))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(written["peft"]))
    from_folder = _loaded_without_warnings(lambda: LoraConfig.from_pretrained(str(tmp_path / "adapter")))
    for config in (from_dict, from_folder):
        assert isinstance(config, LoraConfig) and config.use_rslora == rslora
        peft_model = get_peft_model(model, config)
        built = {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
                 if hasattr(module, "lora_A")}
        expected = {m.path: int(r) for m, r in zip(layout.modules, ranks) if r > 0}
        assert {path: module.r["default"] for path, module in built.items()} == expected
        # alpha = 2 x rank in every module (alpha / r = 2); with rsLoRA one alpha, 2 x the commonest rank (2)
        alphas = {path: module.lora_alpha["default"] for path, module in built.items()}
        assert alphas == ({path: 4.0 for path in expected} if rslora else {p: 2.0 * r for p, r in expected.items()})
        model = peft_model.unload()   # the bare model again for the next loader


def test_the_alpha_pattern_is_written_even_when_every_rank_is_the_same(tmp_path):
    layout = layout_of(tiny_llama(layers=2))
    write_plan(build_plan(layout, np.full(len(layout.modules), 3), "uniform", 10**6), tmp_path / "plan.json")
    peft = json.loads((tmp_path / "plan.json").read_text())["peft"]
    assert peft["alpha_pattern"] == {} and peft["rank_pattern"] == {} and peft["r"] == 3 and peft["lora_alpha"] == 6


def test_a_plan_file_and_a_flat_file_from_before_read_as_the_same_plan_and_retrain_key(tmp_path):
    from analysis.training.retrain import retrain_key
    layout = layout_of(tiny_bert())
    plan = build_plan(layout, _ranks(layout), "test", 10**6, settings={"val_size": 16})
    assert plan_file(plan)["peft"]["target_modules"] == plan["target_modules"]   # the plan's order, not a set's
    write_plan(plan, tmp_path / "plan.json")
    (tmp_path / "flat.json").write_text(json.dumps(plan, indent=1))   # what `plan --out` wrote before
    for path in ("plan.json", "flat.json"):
        read = read_plan(tmp_path / path)
        assert read == json.loads(json.dumps(plan))
        assert retrain_key("context", read, TrainSettings()) == retrain_key("context", plan, TrainSettings())


def test_a_plan_file_of_another_peft_type_is_one_sentence(tmp_path):
    from analysis.errors import UserError
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"peft": {"peft_type": "IA3"}, "analysis": {}}))
    with pytest.raises(UserError, match="holds a IA3 config; a rank plan is a LoRA config"):
        read_plan(path)
