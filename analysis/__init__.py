"""Layer and rank importance for LoRA fine-tuning: the engine behind the dashboard and the CLI.

Importable without Streamlit. See README.md for the command line and DESIGN.md for the methods.
"""
