"""Slow, obviously-correct NumPy references that the TF ops are tested against."""
