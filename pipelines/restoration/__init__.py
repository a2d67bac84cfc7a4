"""Restoration: super-resolution (HAT, DRCT) and deraining (DRSformer) on image folders."""
