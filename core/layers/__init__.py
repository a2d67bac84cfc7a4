"""Shared transformer layers (attention, windows, embeddings, blocks)."""
