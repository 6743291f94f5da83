"""Where a webhook may go: the SSRF guard (see :mod:`shared.webhooks`), applied at
submit (the API) and again at every delivery (the webhook worker), after DNS
resolution, on every address the host resolves to."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.errors import UnsafeWebhook
from shared.settings import Environment, Settings, WebhookSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TargetPolicy:
    """Where webhooks may go."""

    https_only: bool
    any_address: bool  # development: loopback and private addresses too
    hosts: frozenset[str] = frozenset()  # allowed by name
    networks: tuple[IPNetwork, ...] = ()  # allowed by address

    @classmethod
    def from_settings(cls, settings: Settings) -> TargetPolicy:
        production = settings.env is not Environment.development
        tenants = settings.api.keys is not None or settings.api.keys_file is not None
        return cls.of(settings.webhooks, production, tenants=tenants)

    @classmethod
    def of(cls, hooks: WebhookSettings, production: bool, tenants: bool = False) -> TargetPolicy:
        """``tenants``: API keys are set, so a development stack serves more than its
        own user, and private addresses need ``allow_private_targets``."""
        hosts, networks = set(), []
        for entry in hooks.allow_hosts:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        any_address = not production and (not tenants or hooks.allow_private_targets)
        return cls(https_only=production, any_address=any_address,
                   hosts=frozenset(hosts), networks=tuple(networks))


# IPv6 ranges never reached: IPv4-compatible addresses (deprecated; ``::`` and ``::1``
# are not global anyway) and the local-use NAT64 prefix, whose IPv4 part is not at a
# fixed place (RFC 6052). Python counts the first as global.
_NEVER = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# IPv6 ranges whose last 32 bits are an IPv4 address a gateway reaches: the well-known
# NAT64 prefix (RFC 6052, which Python counts as global) and IPv4-translated (SIIT).
_LAST_32_BITS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::ffff:0:0:0/96"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, where a translator or tunnel would take a
    connection to it: IPv4-mapped, NAT64, IPv4-translated, 6to4, Teredo's client."""
    if any(address in net for net in _LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour or (
        address.teredo[1] if address.teredo else None)


def refused_address(address: IPAddress) -> bool:
    """Not globally routable: loopback, private, link-local, shared, multicast, reserved...
    or an IPv6 form of such an IPv4 address (NAT64 ``64:ff9b::7f00:1`` is 127.0.0.1)."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in net for net in _NEVER):
            return True
        embedded = embedded_ipv4(address)
        if embedded is not None and refused_address(embedded):
            return True
    return address.is_multicast or not address.is_global


def target(url: str, policy: TargetPolicy) -> tuple[str, int]:
    """The host and port a webhook URL names, once its scheme is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeWebhook("must be an http(s) URL with a host")
    if parts.scheme != "https" and policy.https_only:
        raise UnsafeWebhook("must be an https:// URL in production")
    host = parts.hostname.lower().rstrip(".")
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def check_addresses(host: str, addresses: list[IPAddress], policy: TargetPolicy) -> None:
    """Refuse a host any of whose addresses chatq must not reach (one is enough: a
    DNS answer mixing public and private addresses is an attack, not an accident)."""
    if policy.any_address or host in policy.hosts:
        return
    if not addresses:
        raise UnsafeWebhook(f"{host} resolves to no address")
    for address in addresses:
        if refused_address(address) and not any(address in n for n in policy.networks):
            raise UnsafeWebhook(
                f"{host} resolves to {address}, a loopback, private, link-local or "
                "otherwise non-public address; an operator may allow it with "
                "CHATQ_WEBHOOKS__ALLOW_HOSTS")


def addresses_of(infos: list[Any]) -> list[IPAddress]:
    """The distinct addresses of a ``getaddrinfo`` answer, in its order."""
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in out:
            out.append(address)
    return out


RESOLVE_TIMEOUT_S = 5.0


async def check_target(url: str, policy: TargetPolicy) -> None:
    """Refuse (:class:`UnsafeWebhook`, naming ``webhook``) a target chatq must not call:
    http in production, or a host resolving to a non-public address (in production, and
    in development with API keys set), unless the allow-list names it. What the API
    checks at submit and ``python -m ops.keys set-webhook`` before it stores a default."""
    host, port = target(url, policy)
    if policy.any_address or host in policy.hosts:
        return
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise UnsafeWebhook(f"{host} could not be resolved ({exc or 'timed out'})") from exc
    check_addresses(host, addresses_of(infos), policy)


def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (an IP literal is itself). Raises OSError when it does not resolve."""
    return addresses_of(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
