"""The SSRF guard: which webhook targets chatq calls."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import SecretStr

from shared.errors import UnsafeWebhook
from shared.settings import ApiSettings, Settings, WebhookSettings
from shared.webhooks import (
    TargetPolicy,
    check_addresses,
    refused_address,
    resolve,
    target,
)

PRODUCTION = TargetPolicy.of(WebhookSettings(), production=True)
DEVELOPMENT = TargetPolicy.of(WebhookSettings(), production=False)




# --- the SSRF guard ------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "2002:7f00:1::", "ff02::1",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", [
    "64:ff9b::7f00:1",  # NAT64 (well-known prefix) of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # ... of the metadata service 169.254.169.254
    "64:ff9b::a00:1",  # ... of 10.0.0.1
    "64:ff9b:1::7f00:1", "64:ff9b:1:7f00:1::",  # local-use NAT64: anywhere in it
    "::7f00:1", "::808:808",  # IPv4-compatible (deprecated): anywhere in it
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
])
def test_ipv6_forms_of_private_ipv4_addresses_are_refused(address: str) -> None:
    """Each reaches a private IPv4 address through a translator or a tunnel."""
    assert refused_address(ipaddress.ip_address(address))
    with pytest.raises(UnsafeWebhook):
        check_addresses("example.com", [ipaddress.ip_address(address)], PRODUCTION)


def test_nat64_of_a_public_address_is_allowed() -> None:
    assert not refused_address(ipaddress.ip_address("64:ff9b::808:808"))  # 8.8.8.8
    assert not refused_address(ipaddress.ip_address("::ffff:0:808:808"))


def test_development_with_api_keys_refuses_private_targets_unless_allowed() -> None:
    """A development stack with API keys serves tenants: one of them must not reach the
    host's loopback or the metadata service through a webhook."""
    loopback = [ipaddress.ip_address("127.0.0.1")]
    tenants = TargetPolicy.of(WebhookSettings(), production=False, tenants=True)
    assert not tenants.https_only
    with pytest.raises(UnsafeWebhook):
        check_addresses("localhost", loopback, tenants)
    allowed = TargetPolicy.of(WebhookSettings(allow_private_targets=True), production=False,
                              tenants=True)
    check_addresses("localhost", loopback, allowed)
    check_addresses("localhost", loopback, DEVELOPMENT)  # no keys: one trusted user
    ignored = TargetPolicy.of(WebhookSettings(allow_private_targets=True), production=True,
                              tenants=True)
    with pytest.raises(UnsafeWebhook):
        check_addresses("localhost", loopback, ignored)  # production: allow_hosts only


def test_the_policy_reads_api_keys_from_settings() -> None:
    dev = Settings(api=ApiSettings(keys=SecretStr("k=acme")))
    assert not TargetPolicy.from_settings(dev).any_address
    assert TargetPolicy.from_settings(Settings()).any_address
    opened = Settings(api=ApiSettings(keys=SecretStr("k=acme")),
                      webhooks=WebhookSettings(allow_private_targets=True))
    assert TargetPolicy.from_settings(opened).any_address


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34",
                                     "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not refused_address(ipaddress.ip_address(address))
    check_addresses("example.com", [ipaddress.ip_address(address)], PRODUCTION)


def test_production_wants_https_and_development_takes_http() -> None:
    with pytest.raises(UnsafeWebhook, match="https"):
        target("http://example.com/hook", PRODUCTION)
    assert target("https://Example.COM./hook", PRODUCTION) == ("example.com", 443)
    assert target("http://127.0.0.1:8080/hook", DEVELOPMENT) == ("127.0.0.1", 8080)
    with pytest.raises(UnsafeWebhook):
        target("ftp://example.com/", DEVELOPMENT)


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    mixed = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.7")]
    with pytest.raises(UnsafeWebhook, match=r"10\.0\.0\.7") as refused:
        check_addresses("rebind.example", mixed, PRODUCTION)
    assert refused.value.status == 422
    assert refused.value.details == [{"field": "webhook", "message": refused.value.reason,
                                      "type": "unsafe_webhook"}]
    check_addresses("rebind.example", mixed, DEVELOPMENT)  # development allows any address


def test_numeric_host_tricks_resolve_to_what_they_are() -> None:
    # 2130706433 and 0x7f.1 are 127.0.0.1 to the resolver: checked after resolution.
    for host in ("2130706433", "127.1", "localhost"):
        with pytest.raises(UnsafeWebhook):
            check_addresses(host, resolve(host, 443), PRODUCTION)


def test_the_allow_list_names_hosts_and_networks() -> None:
    policy = TargetPolicy.of(WebhookSettings(allow_hosts=["hooks.internal", "10.20.0.0/16"]),
                             production=True)
    private = [ipaddress.ip_address("10.99.0.1")]
    check_addresses("hooks.internal", private, policy)  # by name
    with pytest.raises(UnsafeWebhook):
        check_addresses("other.internal", private, policy)
    check_addresses("other.internal", [ipaddress.ip_address("10.20.3.4")], policy)  # network
    with pytest.raises(UnsafeWebhook):
        check_addresses("other.internal", [ipaddress.ip_address("10.21.3.4")], policy)
