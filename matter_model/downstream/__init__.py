"""Downstream tasks on the MATTER encoder: each module exposes ``add_arguments`` and ``run``."""
