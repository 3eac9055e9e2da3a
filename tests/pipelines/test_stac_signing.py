"""Planetary Computer signing: items signed by the planetary-computer package, hrefs re-signed
right before a read, and the subscription key sent along; the SAS token endpoint is a small
server on 127.0.0.1 (the package's token URL setting points at it), never the real one."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import planetary_computer.sas
import pytest
from planetary_computer.sas import SASToken
from planetary_computer.settings import Settings

from pipelines.stac.signing import (
    SigningError,
    is_sas_signed,
    refresh_signature,
    resolve_href,
    sign_href,
    sign_item,
    unsigned,
)

B04 = (
    "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/32/T/NR/2024/05/01/"
    "S2A_MSIL2A_20240501T101601_N0510_R065_T32TNR_20240501T162422.SAFE/GRANULE/"
    "L2A_T32TNR_A046233_20240501T101846/IMG_DATA/R10m/T32TNR_20240501T101601_B04_10m.tif"
)


class TokenServer(ThreadingHTTPServer):
    """Answers ``GET /<account>/<container>`` like the SAS token API: a new token each time,
    valid for ``lifetime``; or ``status`` when that is set."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.lifetime = timedelta(minutes=45)
        self.status = 200
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Ocp-Apim-Subscription-Key")))
        now = datetime.now(UTC)
        expiry = now + self.server.lifetime
        serial = len(self.server.requests)
        token = (
            f"st={now:%Y-%m-%dT%H:%M:%SZ}&se={expiry:%Y-%m-%dT%H:%M:%SZ}&sp=rl&sv=2024-05-04"
            f"&sr=c&sig=token{serial}"
        )
        body = json.dumps({"msft:expiry": f"{expiry:%Y-%m-%dT%H:%M:%SZ}", "token": token})
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        """Quiet: the tests read ``server.requests``."""


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenServer]:
    server = TokenServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = Settings.get()
    monkeypatch.setattr(settings, "sas_url", server.url)
    monkeypatch.setattr(settings, "subscription_key", None)
    monkeypatch.setattr(planetary_computer.sas, "TOKEN_CACHE", {})
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_item_is_signed_once_per_container(tokens: TokenServer) -> None:
    item = {
        "id": "S2A_MSIL2A_20240501T101601_R065_T32TNR",
        "assets": {
            "B04": {"href": B04},
            "B08": {"href": B04.replace("B04", "B08")},
            "tilejson": {"href": "https://planetarycomputer.microsoft.com/api/data/v1/x"},
        },
    }
    signed = sign_item(item)
    assert is_sas_signed(signed["assets"]["B04"]["href"])
    assert signed["assets"]["B08"]["href"].startswith(item["assets"]["B08"]["href"] + "?st=")
    assert signed["assets"]["tilejson"] == item["assets"]["tilejson"]  # not in blob storage
    assert not is_sas_signed(item["assets"]["B04"]["href"])  # the input is left alone
    assert tokens.requests == [("/sentinel2l2a01/sentinel2-l2", None)]  # cached for both


def test_an_expiring_signature_is_renewed_just_before_the_read(tokens: TokenServer) -> None:
    tokens.lifetime = timedelta(seconds=30)  # under the package's one-minute margin
    signed_at_search = sign_href(B04)
    read = resolve_href(signed_at_search)
    assert is_sas_signed(read) and read != signed_at_search
    assert unsigned(read) == B04 and read.count("?") == 1  # replaced, not appended to
    assert len(tokens.requests) == 2


def test_a_valid_signature_reuses_the_cached_token(tokens: TokenServer) -> None:
    signed = sign_href(B04)
    assert refresh_signature(signed) == signed
    assert len(tokens.requests) == 1


def test_a_local_mirror_drops_the_token_and_needs_no_signing(tokens: TokenServer) -> None:
    signed = sign_href(B04)
    mirror = resolve_href(
        signed, [("https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/", "file:///m/")]
    )
    assert mirror == "/m/" + B04.split("sentinel2-l2/", 1)[1]
    assert len(tokens.requests) == 1


def test_the_subscription_key_goes_with_the_token_request(
    tokens: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "my-key")
    sign_href(B04)
    assert tokens.requests == [("/sentinel2l2a01/sentinel2-l2", "my-key")]


def test_a_refused_token_gives_a_clear_error(
    tokens: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens.status = 403
    monkeypatch.setattr(
        planetary_computer.sas, "get_token", _no_retries(planetary_computer.sas.get_token)
    )
    with pytest.raises(SigningError, match="PC_SDK_SUBSCRIPTION_KEY") as failure:
        sign_href(B04)
    assert "403" in str(failure.value) and B04 in str(failure.value)


def test_a_refused_token_names_neither_the_old_token_nor_the_key(
    tokens: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = sign_href(B04)  # sig=token1
    tokens.status = 403
    monkeypatch.setattr(planetary_computer.sas, "TOKEN_CACHE", {})
    monkeypatch.setattr(
        planetary_computer.sas, "get_token", _no_retries(planetary_computer.sas.get_token)
    )
    monkeypatch.setenv("PC_SDK_SUBSCRIPTION_KEY", "fake-subscription-key")
    with pytest.raises(SigningError) as failure:
        sign_href(stale)
    message = str(failure.value)
    assert B04 in message and "sig=token1" not in message
    assert "fake-subscription-key" not in message


def _no_retries(get_token: Callable[..., SASToken]) -> Callable[[str, str], SASToken]:
    """The token fetch without its ten backed-off retries, so a refusal fails at once."""
    return lambda account, container: get_token(account, container, retry_total=0)
