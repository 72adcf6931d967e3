"""Is a client address on this machine? The control API (`/_sandbox/`) answers only those."""

from __future__ import annotations

import ipaddress


def is_loopback_address(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
