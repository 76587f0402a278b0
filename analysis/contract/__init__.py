"""The contract every package shares, at the bottom of the import order: what a signal is and may bring (the
signal record, its plan family, adapter start and page), what it hands back (the tidy result and its helpers), what
a run is, an exhibit (a named figure or table), how long work reports its progress into a dashboard job's folder,
and whole-or-nothing file writes."""
