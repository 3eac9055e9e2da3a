"""Secret query parameters of signed URLs never reach a message: the redaction function, and the
errors of the readers that quote an href (no network: the signed URLs point at missing files)."""

from __future__ import annotations

import pytest
from rasterio.enums import Resampling

from pipelines.cog_stack import CogStackError, _open_on_grid
from pipelines.grid import CoregistrationError, region_grid
from pipelines.redact import REDACTED, redact_urls
from pipelines.scene_reader import read_asset

SAS = "st=2024-05-01T10%3A00%3A00Z&se=2024-05-01T11%3A00%3A00Z&sp=rl&sv=2024-05-04&sr=c"
PC_HREF = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/B04.tif?{SAS}&sig=S3CR3T%3D"
S3_HREF = (
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/B04.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAFAKE%2F20240501&X-Amz-Security-Token=FAKETOKEN&X-Amz-Signature=ABCDEF"
)
SECRETS = ("S3CR3T", "AKIAFAKE", "FAKETOKEN", "ABCDEF", "2024-05-01T11")


def test_sas_token_values_are_replaced_and_the_path_kept() -> None:
    redacted = redact_urls(PC_HREF)
    assert redacted.startswith("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/B04.tif?")
    assert f"sig={REDACTED}" in redacted and f"se={REDACTED}" in redacted
    assert not any(secret in redacted for secret in SECRETS)


def test_presigned_s3_parameters_are_replaced_case_insensitively() -> None:
    redacted = redact_urls(S3_HREF.replace("X-Amz-Signature", "x-amz-signature"))
    assert redacted.count(REDACTED) == 4
    assert not any(secret in redacted for secret in SECRETS)


def test_every_url_of_a_message_is_cleaned_and_other_text_left_alone() -> None:
    message = f"'{PC_HREF}' not recognized; tried {S3_HREF} (see ?page=2&limit=10 and sig=x)"
    redacted = redact_urls(message)
    assert not any(secret in redacted for secret in SECRETS)
    assert "?page=2&limit=10" in redacted  # harmless parameters stay readable
    assert " sig=x)" in redacted  # outside a query string: not a parameter


@pytest.mark.parametrize("text", ["", "/data/B04.tif", "https://host/B04.tif", 42])
def test_text_without_secrets_is_unchanged(text: object) -> None:
    assert redact_urls(text) == str(text)


@pytest.fixture
def grid():
    return region_grid((11.0, 46.0, 11.01, 46.01), 32632, 10.0)


def test_the_scene_reader_error_names_the_href_without_its_token(grid) -> None:
    with pytest.raises(CoregistrationError, match="cannot read /nonexistent/B04.tif") as failure:
        read_asset("/nonexistent/B04.tif?" + PC_HREF.split("?")[1], grid, Resampling.nearest)
    assert "S3CR3T" not in str(failure.value) and REDACTED in str(failure.value)


def test_the_cog_stack_error_names_the_href_without_its_token(grid) -> None:
    with pytest.raises(CogStackError, match="cannot open /nonexistent/B04.tif") as failure:
        _open_on_grid("/nonexistent/B04.tif?" + S3_HREF.split("?")[1], grid, threads=1)
    assert not any(secret in str(failure.value) for secret in SECRETS)
