"""A deterministic synthetic Sentinel-2 L2A "demo world": the embedded, offline data source.

``generate_demo_world(root)`` writes Earth Search v1 style COGs, a STAC collection and item
collection (servable by ``rustac serve``), and ground truth (materials, changes, shifts).
"""

from pipelines.demo_world.generate import (
    DEFAULT_SPEC,
    SPECS,
    TINY_SPEC,
    DemoWorldSpec,
    RegionSpec,
    generate_demo_world,
    load_manifest,
)
from pipelines.demo_world.materials import Material

__all__ = [
    "DEFAULT_SPEC",
    "SPECS",
    "TINY_SPEC",
    "DemoWorldSpec",
    "Material",
    "RegionSpec",
    "generate_demo_world",
    "load_manifest",
]
