"""Shared, field-agnostic building blocks: layers, registry, checkpoints, tiling, batch runner,
training loop, configs and CLI helpers. Nothing in here imports a pipeline."""
