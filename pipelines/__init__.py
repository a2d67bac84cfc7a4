"""One package per field (restoration, forecast, medseg, rs, pose); each composes ``vitsuite.core``."""
