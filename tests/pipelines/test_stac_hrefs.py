"""Asset hrefs outside the endpoint's hosts are refused before any read: the policy per
endpoint, real items of both providers passing, hostile hrefs refused with a clear error, and
the ``stac_items`` asset failing on such an item before it writes anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from assets.config import ENDPOINTS
from pipelines.stac.hrefs import HrefPolicy, UntrustedHrefError, check_host_pattern, host_matches
from pipelines.stac.items import asset_path, check_asset_hrefs, split_usable
from pipelines.stac.signing import resolve_href
from tests.pipelines.test_stac_items import COLLECTIONS, _items

ES = HrefPolicy.for_endpoint(ENDPOINTS["earth-search"])
PC = HrefPolicy.for_endpoint(ENDPOINTS["planetary-computer"])
DEMO = HrefPolicy.for_endpoint("demo")
HOSTILE = [
    "file:///etc/passwd",
    "/etc/passwd",
    "/vsicurl/http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com@169.254.169.254/B04.tif",
    "https://evil.example/sentinel-cogs.s3.us-west-2.amazonaws.com/B04.tif",
    "https://s3.us-west-2.amazonaws.com.evil.example/B04.tif",
    "s3://sentinel-cogs/B04.tif",
    "ftp://sentinel-cogs.s3.us-west-2.amazonaws.com/B04.tif",
]


@pytest.mark.parametrize("href", HOSTILE)
@pytest.mark.parametrize("policy", [ES, PC], ids=["earth-search", "planetary-computer"])
def test_hostile_hrefs_are_refused_for_remote_endpoints(policy: HrefPolicy, href: str) -> None:
    with pytest.raises(UntrustedHrefError, match="stac.asset_hosts") as failure:
        policy.check(href, "asset 'red' of item X")
    assert "asset 'red' of item X" in str(failure.value)


def test_each_provider_allows_its_own_asset_hosts_only() -> None:
    es_href = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/B04.tif"
    pc_href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/B04.tif?sig=x"
    assert ES.refusal(es_href) is None and PC.refusal(pc_href) is None
    assert ES.refusal(pc_href) and PC.refusal(es_href)
    assert PC.refusal("https://planetarycomputer.microsoft.com/api/data/v1/x") is None


def test_local_files_only_for_a_local_endpoint_or_a_rewrite() -> None:
    assert DEMO.refusal("file:///data/demo_world/B04.tif") is None
    assert DEMO.refusal("/data/demo_world/B04.tif") is None
    loopback = HrefPolicy.for_endpoint("http://127.0.0.1:8080")
    assert loopback.refusal("file:///data/B04.tif") is None
    assert ES.refusal("file:///data/B04.tif")
    mirrored = HrefPolicy.for_endpoint(
        ENDPOINTS["earth-search"], href_rewrites=[("file:///m/", "")]
    )
    assert mirrored.refusal("file:///m/B04.tif") is None
    assert mirrored.refusal("file:///etc/passwd")


def test_configured_asset_hosts_replace_the_known_ones_but_keep_the_endpoint() -> None:
    policy = HrefPolicy.for_endpoint("https://stac.example.org/v1", ["*.cdn.example.org"])
    assert policy.refusal("https://eu.cdn.example.org/B04.tif") is None
    assert policy.refusal("https://stac.example.org/assets/B04.tif") is None
    assert policy.refusal("https://cdn.example.org/B04.tif")  # the domain itself is not under it
    assert HrefPolicy.for_endpoint(ENDPOINTS["earth-search"], []).hosts == (
        "earth-search.aws.element84.com",
    )


@pytest.mark.parametrize("pattern", ["https://host.org", "host.org/path", "*", "*.org:443", "x"])
def test_malformed_host_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="must be a host name"):
        check_host_pattern(pattern)


def test_host_patterns_match_case_insensitively() -> None:
    assert host_matches("Sentinel2L2A01.Blob.Core.Windows.Net", "*.blob.core.windows.net")
    assert not host_matches("blob.core.windows.net", "*.blob.core.windows.net")


def test_the_read_path_refuses_before_resolving() -> None:
    item = {"id": "X", "assets": {"red": {"href": "file:///etc/passwd"}}}
    with pytest.raises(UntrustedHrefError, match="asset 'red' of item X"):
        asset_path(item, "B04", policy=ES)
    with pytest.raises(UntrustedHrefError):
        resolve_href("http://169.254.169.254/x", policy=PC)
    assert asset_path(item, "B04", policy=DEMO) == "/etc/passwd"


@pytest.mark.parametrize(("name", "provider", "count"), COLLECTIONS)
def test_real_items_of_both_providers_pass(
    real_data: Callable[..., Path], name: str, provider: str, count: int
) -> None:
    usable, _ = split_usable(_items(real_data("stac", name)))
    check_asset_hrefs(usable, HrefPolicy.for_endpoint(ENDPOINTS[provider]))


def test_the_stac_items_asset_refuses_a_hostile_href_before_writing(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STAC API on another host serving the demo world's items with their local hrefs."""
    import dagster as dg

    from assets import imagery
    from assets.resources import DataStore, StacApi
    from pipelines.stac import StacServer

    collection = json.loads((tiny_world / "items.json").read_text())
    for feature in collection["features"]:
        feature["assets"]["red"]["href"] = "http://169.254.169.254/latest/"
    (tmp_path / "items.json").write_text(json.dumps(collection))
    with StacServer([tiny_world / "collection.json", tmp_path / "items.json"]) as server:
        result = dg.materialize(
            [imagery.stac_items],
            partition_key="lombardy|2024-07-01",
            resources={
                "store": DataStore(root=str(tmp_path)),
                "stac": StacApi(endpoint=server.url),
            },
            raise_on_error=False,
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error
    assert failure.cause.cls_name == "UntrustedHrefError"
    assert "169.254.169.254" in failure.cause.message
    assert not (tmp_path / "items").exists()
