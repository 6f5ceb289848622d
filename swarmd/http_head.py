"""The access rules of the node's HTTP ports, kept apart from the web stack
(:mod:`swarmd.web`) so that loading the config does not import it: what counts as
loopback, the rule "beyond loopback only with a token", the dashboard's security
headers. Requests themselves are parsed by h11 under uvicorn."""

from __future__ import annotations

import functools
import ipaddress

LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
)


@functools.lru_cache(maxsize=64)  # every request of a loopback port asks, with the same few
def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``; False for anything else."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(port: str, bind: str, token: str | None) -> None:
    """The rule of every opt-in HTTP port (``port``: its config prefix, e.g. "metrics"):
    beyond loopback only with a token, and a token hard to guess. ValueError if not."""
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ValueError(
            f"{port}_token: use at least 16 printable characters without spaces "
            "(for example the output of `openssl rand -hex 16`)"
        )
    if token is None and not is_loopback(bind):
        raise ValueError(
            f"{port}_bind {bind!r} is not a loopback address: set {port}_token too "
            "(every request must then carry it, as Authorization: Bearer or ?token=)"
        )


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port (``[::1]:80`` -> ``::1``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
