"""Layer and rank importance for LoRA fine-tuning: the engine behind the dashboard and the command line.

Importable without Streamlit. docs/architecture.md walks through the packages; docs/methods.md gives
each method exactly, with its reference code and our deviations.
"""
