"""Retraining a plan from scratch in its own process, and comparing plans with uniform LoRA over seeds."""
