"""Remote_sensing model families; importing this package registers them."""
