"""Background jobs the dashboard starts: launching and watching them, their folder protocol, progress bars."""
