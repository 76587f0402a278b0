"""Figures, the all-signals overview, every exhibit of a run by name, and the paper style for exports."""
