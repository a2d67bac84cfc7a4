"""Gradio demos: thin front-ends that only call the pipelines' public functions."""
