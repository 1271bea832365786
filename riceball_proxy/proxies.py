"""The client's address behind trusted proxies (``RICEBALL_TRUSTED_PROXIES``).

A request's peer is the client unless it is one of the trusted proxies; then ``X-Forwarded-For`` is
read from its right end, each address a proxy appended, skipping trusted ones: the first address that is
not a trusted proxy is the client. What comes left of it was written by the client, or by proxies not
trusted, and is never believed. Without trusted proxies the header is ignored altogether.
"""
from __future__ import annotations

import ipaddress

from aiohttp import web

#: Where the address found is kept on the request (the access log reads it after the handler).
CLIENT_ADDRESS = web.RequestKey("riceball.client_address", str)


def client_address(request: web.BaseRequest) -> str | None:
    """The client's address: the peer, or what trusted proxies in front say it is."""
    return request.get(CLIENT_ADDRESS) or request.remote


def forwarded_middleware(trusted):
    """A middleware that reads the client's address behind the ``trusted`` proxies into the request once
    (installed only when there are trusted proxies: without them the peer is the client, at no cost)."""

    @web.middleware
    async def forwarded(request: web.Request, handler) -> web.StreamResponse:
        request[CLIENT_ADDRESS] = forwarded_client(request.remote, request.headers.getall("X-Forwarded-For", ()),
                                                   trusted) or ""
        return await handler(request)

    return forwarded


def forwarded_client(peer: str | None, forwarded_for, trusted) -> str | None:
    """The client's address given the peer, the X-Forwarded-For header lines and the trusted networks."""
    if not _trusted(peer, trusted):
        return peer
    address = peer
    hops = [hop.strip() for line in forwarded_for for hop in line.split(",")]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:  # not an address: nothing left of it can be read either
            break
        address = hop
        if not _trusted(hop, trusted):
            break
    return address


def _trusted(address: str | None, trusted) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in network for network in trusted)
