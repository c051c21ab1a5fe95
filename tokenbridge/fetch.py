"""The one way Tokenbridge fetches anything from the network: an SSRF-guarded GET of a JSON document.

Identity provider URLs come from cluster users, so every outbound fetch (discovery, JWKS, in the operator and in
the exchange server) goes through :func:`fetch_json`, which:

- allows ``https`` only, unless ``FetchPolicy.allow_http`` (an IdP's ``spec.allowInsecureHTTP`` additionally needs
  the operator/server to be started with ``TOKENBRIDGE_ALLOW_INSECURE_HTTP=true``; callers AND the two);
- resolves the host and refuses the request when *any* resolved address is loopback, private, link-local
  (including the cloud metadata addresses), multicast, unspecified, reserved or otherwise not globally routable,
  unless the address lies inside ``FetchPolicy.allowed_networks`` (the allow-list is the only exception, and is
  how tests and private IdPs are reached);
- connects to the checked address itself (the URL host is sent as ``Host`` and as TLS SNI, and the certificate is
  verified against the host name), so a DNS answer that changes between check and connect cannot redirect it;
- never follows redirects, never uses proxies from the environment, caps the whole exchange at
  ``FetchPolicy.timeout`` (at most 5 s) and the body at ``FetchPolicy.max_bytes``;
- verifies TLS against the system/certifi roots, or only against ``ca_bundle`` (PEM text) / ``ca_file`` when given.

The timeout applies to each of connect, TLS and every read; the body loop also stops at the deadline.

Errors are :class:`FetchError` with a CamelCase ``reason`` that the operator puts into conditions as is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import certifi
import httpx

MAX_TIMEOUT = 5.0

# Reasons (FetchError.reason)
BLOCKED_ADDRESS = "BlockedAddress"
INSECURE_URL = "InsecureURL"
INVALID_URL = "InvalidURL"
UNREACHABLE = "Unreachable"
TLS_ERROR = "TLSError"
INVALID_TLS_CONFIGURATION = "InvalidTLSConfiguration"
HTTP_ERROR = "HTTPError"
TOO_LARGE = "TooLarge"
INVALID_JSON = "InvalidJSON"
REDIRECTED = "Redirected"

# Named separately so a message says what was hit; both are also link-local / unique-local anyway.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# NAT64 (RFC 6052): the last 32 bits are the IPv4 address that is actually reached.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{name} must be true or false, not {text!r}")


@dataclass(frozen=True)
class FetchPolicy:
    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    timeout: float = MAX_TIMEOUT
    max_bytes: int = 1 << 20

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FetchPolicy:
        """``TOKENBRIDGE_ALLOWED_NETWORKS`` (comma-separated CIDRs) and ``TOKENBRIDGE_ALLOW_INSECURE_HTTP``."""
        networks = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in environ.get("TOKENBRIDGE_ALLOWED_NETWORKS", "").split(",")
            if part.strip()
        )
        allow_http = _parse_bool(
            environ.get("TOKENBRIDGE_ALLOW_INSECURE_HTTP", "false"), "TOKENBRIDGE_ALLOW_INSECURE_HTTP"
        )
        return cls(allow_http=allow_http, allowed_networks=networks)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)


def blocked_because(address: IPAddress) -> str | None:
    """Why an address may not be fetched from without an allow-list entry, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if address in NAT64_PREFIX:
            mapped = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if mapped is not None:
            return blocked_because(mapped)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for attribute, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(address, attribute):
            return f"a {what} address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (itself when it is an IP literal), in resolver order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(UNREACHABLE, f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(UNREACHABLE, f"{host} has no addresses")
    return addresses


def check_url(url: str, policy: FetchPolicy) -> tuple[str, str, int, IPAddress]:
    """Scheme, host, port and the one checked address to connect to; FetchError when the URL is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(INVALID_URL, f"not a valid URL: {exc}") from exc
    if "@" in parts.netloc:
        raise FetchError(INVALID_URL, "URLs with user information are refused")
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise FetchError(INVALID_URL, f"{url!r} is not an absolute http(s) URL")
    if scheme == "http" and not policy.allow_http:
        raise FetchError(INSECURE_URL, f"{url} is not https (plain http is a development opt-in)")
    host = parts.hostname
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    for address in addresses:
        why = blocked_because(address)
        if why and not policy.allows_address(address):
            raise FetchError(
                BLOCKED_ADDRESS, f"{host} resolves to {address}, {why}, which is not in the allowed networks"
            )
    return scheme, host, port, addresses[0]


def _ssl_context(ca_bundle: str | None, ca_file: str | None, client_cert: tuple[str, str] | None) -> ssl.SSLContext:
    if ca_bundle or ca_file:
        context = ssl.create_default_context(cafile=ca_file or None, cadata=ca_bundle or None)
    else:
        context = ssl.create_default_context(cafile=certifi.where())
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    return context


def fetch_json(
    url: str,
    policy: FetchPolicy,
    *,
    ca_bundle: str | None = None,
    client_cert: tuple[str, str] | None = None,
    bearer_token: str | None = None,
    ca_file: str | None = None,
) -> Any:
    """GET ``url`` under ``policy`` and return the parsed JSON body."""
    scheme, host, port, address = check_url(url, policy)
    parts = urlsplit(url)
    ip_host = f"[{address}]" if address.version == 6 else str(address)
    default_port = port == (443 if scheme == "https" else 80)
    pinned = parts._replace(netloc=ip_host if default_port else f"{ip_host}:{port}").geturl()
    host_header = f"[{host}]" if ":" in host else host
    headers = {
        "Host": host_header if default_port else f"{host_header}:{port}",
        "Accept": "application/json, application/jwk-set+json",  # the kube-apiserver JWKS insists on the latter
        "Accept-Encoding": "identity",  # the cap counts what we hold in memory: no decompression bombs
    }
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    timeout = min(policy.timeout, MAX_TIMEOUT)
    deadline = time.monotonic() + timeout
    try:
        verify: ssl.SSLContext | bool = _ssl_context(ca_bundle, ca_file, client_cert) if scheme == "https" else False
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise FetchError(
            INVALID_TLS_CONFIGURATION, f"cannot use the configured CA bundle or client certificate: {exc}"
        ) from exc
    try:
        with httpx.Client(verify=verify, trust_env=False, follow_redirects=False, timeout=timeout) as client:
            request = client.build_request(
                "GET", pinned, headers=headers, extensions={"sni_hostname": host} if scheme == "https" else {}
            )
            response = client.send(request, stream=True)
            try:
                if response.is_redirect or 300 <= response.status_code < 400:
                    raise FetchError(REDIRECTED, f"{url} answered {response.status_code} (redirects are not followed)")
                if response.status_code != 200:
                    raise FetchError(HTTP_ERROR, f"{url} answered HTTP {response.status_code}")
                length = response.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                    raise FetchError(TOO_LARGE, f"{url} sent more than {policy.max_bytes} bytes")
                body = bytearray()
                for chunk in response.iter_raw():
                    body.extend(chunk)
                    if len(body) > policy.max_bytes:
                        raise FetchError(TOO_LARGE, f"{url} sent more than {policy.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FetchError(UNREACHABLE, f"{url} did not answer within {timeout:g}s")
            finally:
                response.close()
    except httpx.TimeoutException as exc:
        raise FetchError(UNREACHABLE, f"{url} did not answer within {timeout:g}s") from exc
    except httpx.ConnectError as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text or isinstance(exc.__cause__, ssl.SSLError):
            raise FetchError(TLS_ERROR, f"TLS with {host} failed: {text}") from exc
        raise FetchError(UNREACHABLE, f"cannot connect to {host}:{port}: {text}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(UNREACHABLE, f"{url} failed: {exc}") from exc
    try:
        return json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError(INVALID_JSON, f"{url} did not return JSON: {exc}") from exc
