"""One module per signal; each registers itself with analysis.registry on import."""
