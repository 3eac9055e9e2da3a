"""Dagster resources: the STAC API to search and the data store the assets write to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from assets.config import Region, endpoint_url
from pipelines.demo_world import SPECS, generate_demo_world
from pipelines.stac import SearchRequest, StacServer


class DataStore(dg.ConfigurableResource):
    """Where every stage writes: one folder per stage, one file or folder per partition."""

    root: str = ".demo/data"

    def path(self, *parts: str) -> Path:
        """``root/parts...``, resolved; a path that leaves ``root`` (``..``, an absolute part,
        a symlink out) is refused, so no partition or setting writes outside the store."""
        root = Path(self.root).resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root):
            raise ValueError(
                f"{'/'.join(parts)!r} resolves to {path}, outside the data store {root} "
                "(storage.root): region names and store paths must stay inside it"
            )
        return path

    def items(self, region: str, time: str) -> Path:
        return self.path("items", region, f"{time}.json")

    def items_snapshot(self, region: str, time: str) -> Path:
        """The partition's items as STAC-GeoParquet: what a replay reads instead of searching."""
        return self.path("items", region, f"{time}.parquet")

    def stack(self, region: str, time: str) -> Path:
        return self.path("stacks", region, f"{time}.zarr")

    def screen(self, region: str, time: str) -> Path:
        return self.path("screens", region, f"{time}.csv")

    def embeddings(self, region: str, time: str) -> Path:
        return self.path("embeddings", region, f"{time}.zarr")

    def change_maps(self, region: str, time: str) -> Path:
        return self.path("change_maps", region, time)

    @property
    def patch_store(self) -> Path:
        return self.path("patches")

    @property
    def model_dir(self) -> Path:
        return self.path("models", "matter")

    @property
    def reports(self) -> Path:
        return self.path("reports")

    @property
    def demo_world(self) -> Path:
        return self.path("demo_world")


class StacApi(dg.ConfigurableResource):
    """A STAC API: a real endpoint, or the embedded demo world behind a local `rustac serve`.

    With ``endpoint: demo`` the resource generates the demo world (once; reruns reuse it) and
    serves it on a free port of 127.0.0.1 for the life of the step; the server is stopped when
    the step ends or fails. With ``replay`` (``stac.replay``) no API is used and no server
    started: `stac_items` reads the partition's snapshot instead.
    """

    endpoint: str = "demo"
    demo_world_root: str = ".demo/data/demo_world"
    demo_world_spec: str = "default"
    collection: str = "sentinel-2-l2a"
    max_cloud_cover: float = 100.0
    replay: bool = False  # stac.replay: items come from the snapshots, no API is contacted
    _url: str = PrivateAttr(default="")

    @property
    def is_demo(self) -> bool:
        return self.endpoint == "demo"

    @property
    def url(self) -> str:
        if self.replay:
            raise RuntimeError(
                "stac.replay is on: no STAC API is searched; set stac.replay false to search"
            )
        if not self._url:
            raise RuntimeError("StacApi.url is only available while the resource is in use")
        return self._url

    def request(
        self, region: Region, start: datetime, end: datetime, **options: object
    ) -> SearchRequest:
        """The search for a region's items acquired in [start, end), under the cloud limit."""
        return SearchRequest(
            url=self.url,
            collections=(self.collection,),
            bbox=region.bbox,
            start=start.isoformat(),
            end=end.isoformat(),
            max_cloud_cover=self.max_cloud_cover,
            mgrs_tiles=region.mgrs_tiles,
            **options,
        )

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[StacApi]:
        if self.replay:  # no URL: a search in replay fails at once, naming the resource
            yield self
            return
        if not self.is_demo:
            self._url = endpoint_url(self.endpoint)
            yield self
            return
        if self.demo_world_spec not in SPECS:
            raise ValueError(
                f"stac.demo_world_spec must be one of {sorted(SPECS)}, not {self.demo_world_spec!r}"
            )
        root = Path(self.demo_world_root)
        generate_demo_world(root, SPECS[self.demo_world_spec])
        with StacServer([root / "collection.json", root / "items.json"]) as server:
            context.log.info(f"demo STAC API (rustac serve) at {server.url}")
            self._url = server.url
            yield self
