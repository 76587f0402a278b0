"""Models and data: where they come from, their adaptable modules and layout, and hidden-state capture."""
