"""The shared rules of turning a signal's table and a parameter budget into per-module LoRA ranks.

Below the signals: a signal's own plan family (analysis/signals/<name>/) reads its tables into `Scores` and spends
a budget with these rules (keep the best ranks, ranks in proportion, fill what is left, uniform LoRA); the rest of
planning (methods by name, the plan JSON, the preview) sits above the signals in analysis/planning/.
"""
