"""Restoration model families; importing this package registers them."""
