"""Small real images for the logo tests (PNG written by hand: no imaging library needed)."""

from __future__ import annotations

import struct
import zlib


def png(width: int, height: int, rgba: tuple[int, int, int, int] = (91, 200, 230, 255)) -> bytes:
    """A PNG of one colour, with a darker band across the middle third."""
    dark = (*(c // 3 for c in rgba[:3]), rgba[3])
    rows = b"".join(
        b"\x00" + bytes(dark if height // 3 <= y < 2 * height // 3 else rgba) * width
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
