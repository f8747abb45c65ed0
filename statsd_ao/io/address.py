"""A listening or target address: ``host:port`` or ``[v6]:port``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port``."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
    else:
        host, colon, port = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
    number = int(port) if port.isdigit() else -1
    if not host or not 0 <= number <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, got {text!r}")
    return Address(host, number)
