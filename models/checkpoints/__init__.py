"""Shipped checkpoints (package data, so a non-editable install carries them)."""
