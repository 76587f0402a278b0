"""The results cache on disk (atomic entries keyed by content hashes) and the runs its entries form."""
