"""Where models and datasets come from: embedded defaults, local paths, hub names."""
from analysis.model.sources.data import TextData, Splits, load_data, split_data
from analysis.model.sources.models import LoadedModel, ModelSource, load_model, resolve_model

__all__ = ["TextData", "Splits", "load_data", "split_data",
           "LoadedModel", "ModelSource", "load_model", "resolve_model"]
