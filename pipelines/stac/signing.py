"""Signed asset hrefs for Microsoft Planetary Computer, and re-signing them just before a read.

Planetary Computer serves its blobs only with a SAS token in the query string, and a token
expires after about 45 minutes: an item signed at search time can be stale by the time a later
asset reads its COGs. So items are signed when they are found (``sign_item``), and every read
passes its href through ``refresh_signature`` first, which swaps an old token for a valid one
(the planetary-computer package caches tokens and fetches a new one a minute before expiry).
``resolve_href`` is that read-side step, after mapping cloud hrefs to a local mirror if asked.

``PC_SDK_SUBSCRIPTION_KEY`` in the environment, when set, is sent with token requests: it raises
Planetary Computer's rate limits, and nothing else needs it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, unquote, urlparse

import planetary_computer
import requests

from pipelines.redact import redact_urls
from pipelines.stac.hrefs import HrefPolicy

PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"
BLOB_STORAGE_SUFFIX = ".blob.core.windows.net"
SUBSCRIPTION_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
# Query parameters that every Azure SAS token carries (start, expiry, permissions, signature).
SAS_QUERY_KEYS = frozenset({"st", "se", "sp", "sig"})

HrefSigner = Callable[[str], str]


class SigningError(RuntimeError):
    """A SAS token could not be obtained; the message names the token URL and the fix."""


def is_planetary_computer(url: str) -> bool:
    """Whether a STAC API URL is Microsoft Planetary Computer's, whose assets need signing."""
    return urlparse(url).netloc == PLANETARY_COMPUTER_HOST


def is_sas_signed(href: str) -> bool:
    """Whether ``href`` is an Azure blob URL that carries a SAS token (which will expire)."""
    parsed = urlparse(href)
    query_keys = set(parse_qs(parsed.query))
    return parsed.netloc.endswith(BLOB_STORAGE_SUFFIX) and query_keys >= SAS_QUERY_KEYS


def unsigned(href: str) -> str:
    """``href`` without its SAS token (the query string of a signed blob URL), else unchanged."""
    return urlparse(href)._replace(query="").geturl() if is_sas_signed(href) else href


def sign_href(href: str) -> str:
    """``href`` with a currently valid SAS token; an old token is replaced, not appended to.

    Hrefs outside Azure blob storage come back unchanged. A subscription key in
    ``PC_SDK_SUBSCRIPTION_KEY`` is sent with the token request.
    """
    parsed = urlparse(href)
    if not parsed.netloc.endswith(BLOB_STORAGE_SUFFIX):
        return href
    key = os.environ.get(SUBSCRIPTION_KEY_ENV)
    if key:
        planetary_computer.set_subscription_key(key)
    try:
        return planetary_computer.sign_url(unsigned(href))
    except requests.RequestException as err:
        raise SigningError(
            f"cannot get a Planetary Computer SAS token for {redact_urls(href)} "
            f"({type(err).__name__}: {redact_urls(err)}). Check the network; on HTTP 429 set "
            f"{SUBSCRIPTION_KEY_ENV} to a Planetary Computer subscription key."
        ) from None


def refresh_signature(href: str) -> str:
    """The read-side hook: re-sign an href that carries a SAS token, leave any other alone."""
    return sign_href(href) if is_sas_signed(href) else href


def resolve_href(
    href: str,
    href_rewrites: Sequence[tuple[str, str]] = (),
    sign: HrefSigner = refresh_signature,
    policy: HrefPolicy | None = None,
) -> str:
    """Apply the first matching (prefix, replacement) rewrite, then turn ``file://`` into a path.

    Rewrites map cloud hrefs to a local mirror or cache (``https://bucket/...`` -> ``/mirror/...``),
    dropping a SAS token on the way. An href still in the cloud goes through ``sign`` just before
    the read: by default an expiring Planetary Computer signature is renewed. With a ``policy``,
    an href outside it is refused first (:class:`~pipelines.stac.hrefs.UntrustedHrefError`).
    """
    if policy is not None:
        policy.check(href)
    for prefix, replacement in href_rewrites:
        if href.startswith(prefix):
            href = replacement + unsigned(href)[len(prefix) :]
            break
    if href.startswith("file://"):
        return unquote(urlparse(href).path)
    return sign(href)


def sign_item(item: dict, signer: HrefSigner = sign_href) -> dict:
    """A copy of a raw STAC item dict with every asset href passed through ``signer``."""
    signed = copy.deepcopy(item)
    for asset in signed.get("assets", {}).values():
        asset["href"] = signer(asset["href"])
    return signed
