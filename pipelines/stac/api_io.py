"""The HTTP side of a STAC search: answers that are not JSON, and bodies broken off mid-way.

``pystac_client`` retries (through urllib3) a request that fails before its answer arrives, but
not one whose body breaks off mid-way, and it lets a body that is not JSON (cut short, or an HTML
error page served with HTTP 200) escape as a bare ``JSONDecodeError`` with no URL. This client
retries the first and turns the second into an :class:`InvalidAnswerError` naming the URL, the
content type and the first bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO

log = logging.getLogger(__name__)

# How requests words a body that broke off: ChunkedEncodingError("Connection broken: ...").
BROKEN_BODY = ("Connection broken", "IncompleteRead")


class InvalidAnswerError(APIError):
    """The server answered, with HTTP 2xx, a body that is not valid JSON."""


class CheckedStacApiIO(StacApiIO):
    """A :class:`StacApiIO` that retries broken-off bodies and names answers that are not JSON."""

    def __init__(self, *args: Any, body_retries: int = 3, backoff_s: float = 0.5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.body_retries, self.backoff_s = body_retries, backoff_s
        self.last_content_type = "unknown"
        self.session.hooks["response"].append(self._remember_content_type)

    def _remember_content_type(self, response: requests.Response, **_: Any) -> None:
        self.last_content_type = response.headers.get("Content-Type", "unknown")

    def request(self, href: str, *args: Any, **kwargs: Any) -> str:
        """:meth:`StacApiIO.request`, tried again when the body broke off mid-way."""
        for attempt in range(self.body_retries + 1):
            try:
                return super().request(href, *args, **kwargs)
            except APIError as err:
                broken = getattr(err, "status_code", None) is None and any(
                    b in str(err) for b in BROKEN_BODY
                )
                if not broken or attempt == self.body_retries:
                    raise
                log.warning("retrying %s: its answer broke off (%s)", href, err)
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def read_json(self, source: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON at ``source``, or an :class:`InvalidAnswerError` saying what came instead."""
        text = self.read_text(source, *args, **kwargs)
        try:
            return self.json_loads(text)
        except ValueError as err:
            href = source if isinstance(source, str) else getattr(source, "href", str(source))
            raise InvalidAnswerError(
                f"{href} answered a body that is not valid JSON "
                f"(Content-Type {self.last_content_type}, "
                f"{len(text)} characters, starting {text[:60]!r}): {err}"
            ) from None
