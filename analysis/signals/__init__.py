"""Signals: one folder per signal, each registering itself with analysis.signals.registry on import.

Beside the folders: the registry, the analysis context a signal computes with, the runner that
caches each signal's result, tidy-table helpers, parallel.py (the processes of a data-parallel
launch), and lora/ (the gated LoRA and warm-up that several signals share).
"""
