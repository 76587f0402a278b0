"""Signals: one folder per signal, each registering itself with analysis.signals.registry on import.

Beside the folders: the registry, the analysis context a signal computes with, the runner that
caches each signal's result, tidy-table helpers, and lora/ (the gated LoRA and warm-up that
several signals share).
"""
