"""The contract every package shares, at the bottom of the import order: what a signal is and hands back (the
signal record, the tidy result and its helpers), what a run is, an exhibit (a named figure or table), and how
long work reports its progress into a dashboard job's folder."""
