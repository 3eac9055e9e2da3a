"""Custom tensor operations of the MATTER model."""

from matter_model.ops.pac import neighbour_views, pac2d

__all__ = ["pac2d", "neighbour_views"]
