"""Figures of tidy tables that signals and reporting both draw: heatmaps, bars, bands, agreement of two signals."""
