"""Custom tensor operations of the MATTER model."""

from matter_model.ops.pac import pac2d, neighbour_views

__all__ = ["pac2d", "neighbour_views"]
