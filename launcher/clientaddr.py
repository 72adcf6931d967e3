"""Where a request comes from: the one place that decides a client's address.

The audit trail ("from where"), the rate limits and the admin login throttle all read it
here, never REMOTE_ADDR directly (a test looks for that).

- TRUSTED_PROXY_COUNT = 0 (the default): the address of the peer, the one connected to
  us. X-Forwarded-For is ignored: anybody can send it.
- TRUSTED_PROXY_COUNT = N: the request came through N proxies of ours, each of which
  appends the address it received the request from to X-Forwarded-For. The client is
  then the Nth address from the right; whatever a browser sent in the header itself is on
  the left of those and is ignored. A request with fewer addresses than N did not pass
  through every proxy (one inside the network, say): all its addresses were written by our
  proxies, and the leftmost, the farthest one known, is taken. A request without the header
  at all (a health check straight to the server) is the peer's.

This works only if the server hands us the real peer: uvicorn must run with
--no-proxy-headers, or it replaces the peer with an address from X-Forwarded-For itself,
for any request from 127.0.0.1 (every command we ship does; see README).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str | None:
    """The address of the client of `request`, normalised, or None when unknown."""
    return decide(
        peer=request.META.get("REMOTE_ADDR"),
        forwarded_for=request.META.get("HTTP_X_FORWARDED_FOR"),
        trusted_proxies=settings.TRUSTED_PROXY_COUNT,
    )


def decide(*, peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str | None:
    """The client's address from the peer's and X-Forwarded-For (several headers joined
    by commas), trusting the last `trusted_proxies` hops. An entry that is not an address
    (garbage, "unknown") falls back to the peer: nothing else is known for sure."""
    chosen = peer
    if trusted_proxies > 0 and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        hops = [hop for hop in hops if hop]
        if hops:
            chosen = hops[-trusted_proxies] if len(hops) >= trusted_proxies else hops[0]
            address = normalised(_without_port(chosen))
            return address if address is not None else normalised(peer)
    return normalised(chosen)


def normalised(value: str | None) -> str | None:
    """The address in its canonical text form (IPv4 for an IPv4-mapped IPv6), or None."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        address = ipaddress.IPv6Address(int(address))  # no %zone
    return str(address)


def _without_port(hop: str) -> str:
    # Proxies may write "203.0.113.7:51234" or "[2001:db8::1]:51234".
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop
