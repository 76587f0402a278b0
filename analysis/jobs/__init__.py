"""Background jobs the dashboard starts: launching, watching, cancelling and resuming them (launch.py)."""
