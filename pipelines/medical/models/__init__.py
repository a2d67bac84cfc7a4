"""Medical model families; importing this package registers them."""
