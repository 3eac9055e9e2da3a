"""Readers of the downstream evaluation datasets in their official layouts."""
