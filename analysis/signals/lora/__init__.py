"""The LoRA machinery several signals share: a uniform LoRA with one gate per rank, and its cached warm-up."""
