"""Which asset hrefs a STAC endpoint's items may point at, checked before anything is read.

An item's hrefs come from a remote server, and GDAL opens whatever it is given: a local path
(``file:///etc/passwd``), a cloud metadata service (``http://169.254.169.254/...``) or any other
host. So each href the pipeline will read must be one of:

* a prefix of ``href_rewrites`` (the operator mapped it, to a local mirror say);
* an ``http(s)`` URL on an allowed host: the endpoint's own, and the hosts its items
  legitimately use (``KNOWN_ASSET_HOSTS``, or ``stac.asset_hosts`` in the config);
* a local path or ``file://`` URL, only when the endpoint itself is local (the demo world, or a
  STAC API on the loopback interface, which serves files of this machine by design).

A host pattern is a host name (``sentinel-cogs.s3.us-west-2.amazonaws.com``) or ``*.`` and a
domain (``*.blob.core.windows.net``: any host under it, not the domain itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from pipelines.redact import redact_urls

# The hosts each provider's Sentinel-2 items put their assets on, by the STAC API's host.
KNOWN_ASSET_HOSTS: dict[str, tuple[str, ...]] = {
    "earth-search.aws.element84.com": ("*.s3.us-west-2.amazonaws.com", "*.s3.amazonaws.com"),
    "planetarycomputer.microsoft.com": ("*.blob.core.windows.net",),
}
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LOCAL_SCHEMES = frozenset({"", "file"})
REMOTE_SCHEMES = frozenset({"http", "https"})


class UntrustedHrefError(ValueError):
    """An asset href points outside what the endpoint's items may use; nothing was read."""


def host_matches(host: str, pattern: str) -> bool:
    """Whether ``host`` is ``pattern``, or lies under the domain of a ``*.domain`` pattern."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


def check_host_pattern(pattern: str) -> str:
    """``pattern`` if it is a host name or ``*.domain``; else a ValueError saying the form."""
    name = pattern.removeprefix("*.")
    if not name or any(c in name for c in "/:*?@ ") or "." not in name.strip("."):
        raise ValueError(
            f"asset host {pattern!r} must be a host name (bucket.s3.amazonaws.com) or '*.' and "
            "a domain (*.blob.core.windows.net), without scheme, port or path"
        )
    return pattern


@dataclass(frozen=True)
class HrefPolicy:
    """Where the asset hrefs of one endpoint's items may point (see the module's docstring)."""

    endpoint: str
    hosts: tuple[str, ...] = ()
    allow_local: bool = False
    href_rewrites: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_endpoint(
        cls,
        endpoint: str,
        asset_hosts: Iterable[str] | None = None,
        href_rewrites: Sequence[Sequence[str]] = (),
    ) -> HrefPolicy:
        """The policy of a STAC API URL (or ``"demo"``); ``asset_hosts`` replaces the known
        hosts of the endpoint's provider, the endpoint's own host is always allowed."""
        host = urlparse(endpoint).hostname or ""
        extra = KNOWN_ASSET_HOSTS.get(host, ()) if asset_hosts is None else tuple(asset_hosts)
        return cls(
            endpoint=endpoint,
            hosts=tuple(check_host_pattern(p) for p in ((host,) if host else ()) + extra),
            allow_local=endpoint == "demo" or host in LOOPBACK_HOSTS,
            href_rewrites=tuple((str(p), str(r)) for p, r in href_rewrites),
        )

    def refusal(self, href: str) -> str | None:
        """Why ``href`` may not be read under this policy, or None when it may."""
        if any(href.startswith(prefix) for prefix, _ in self.href_rewrites):
            return None
        parsed = urlparse(href)
        scheme = parsed.scheme.lower()
        if scheme in LOCAL_SCHEMES:
            return None if self.allow_local else "a local path, and the endpoint is not local"
        if scheme not in REMOTE_SCHEMES:
            return f"its scheme {scheme!r} is not http(s)"
        host = parsed.hostname or ""
        if any(host_matches(host, pattern) for pattern in self.hosts):
            return None
        return f"its host {host!r} is not among {list(self.hosts)}"

    def check(self, href: str, what: str = "an asset") -> None:
        """Raise :class:`UntrustedHrefError` naming ``what`` and the fix if ``href`` is refused."""
        reason = self.refusal(href)
        if reason is not None:
            raise UntrustedHrefError(
                f"{what} has the href {redact_urls(href)}: {reason}, so it is not read (endpoint "
                f"{self.endpoint}). If the endpoint's items really live there, add the host to "
                "`stac.asset_hosts` or map the prefix with `stac.href_rewrites` in the config."
            )
