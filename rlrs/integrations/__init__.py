"""Integrations with the trainers people use; each is an optional extra (``rlrs[hf]`` for Hugging Face)."""
