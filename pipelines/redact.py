"""Signed URLs without their secrets, for every log line, error message and metadata value.

A Planetary Computer href carries an Azure SAS token in its query string (``sig=`` is the
secret, ``st``/``se``/``sp``/... its terms); a presigned S3 or GCS URL carries ``X-Amz-*`` or
``X-Goog-*`` parameters. Anyone holding such a URL can read the blob until it expires, so text
that leaves the process (logs, exceptions, Dagster metadata) passes through :func:`redact_urls`
first. Only the values of these parameters are replaced: the path and the other parameters stay
readable for debugging.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"
# Azure SAS parameters, presigned S3/GCS parameters, and keys some APIs take in the query.
SECRET_QUERY_KEYS = (
    r"sig|se|st|sp|sv|sr|spr|sip|ss|srt|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid"
    r"|x-amz-[\w-]+|x-goog-[\w-]+|signature|awsaccesskeyid|expires"
    r"|subscription-key|subscription_key|api_key|apikey|access_token"
)
_SECRET_PARAM = re.compile(rf"([?&](?:{SECRET_QUERY_KEYS})=)[^&#\s'\"<>)\]]*", re.IGNORECASE)


def redact_urls(text: object) -> str:
    """``text`` (any object, as ``str``) with the value of every secret query parameter replaced.

    Works on whole messages, so a GDAL or HTTP error that quotes the URL it failed on is
    cleaned too: ``https://a.blob.core.windows.net/c/B04.tif?st=..&sig=abc`` becomes
    ``https://a.blob.core.windows.net/c/B04.tif?st=REDACTED&sig=REDACTED``.
    """
    return _SECRET_PARAM.sub(rf"\g<1>{REDACTED}", str(text))
