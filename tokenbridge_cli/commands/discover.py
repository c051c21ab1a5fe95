"""``tokenbridge discover``: what the operator would make of a well-known URL, before any resource is applied.

It calls the operator's own :func:`tokenbridge.discovery.discover` with a spec built from the URL and the flags,
so the SSRF guard, the issuer check and the provider quirks (Auth0's trailing slash, Entra's ``{tenantid}``,
Okta's authorization servers) are exactly the operator's, and a refusal here is the refusal the operator's
condition would show.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tokenbridge import api
from tokenbridge.discovery import DiscoveryError, KubeCredentials, ProviderMetadata, discover
from tokenbridge.fetch import FetchPolicy
from tokenbridge.issuers import TENANT_PLACEHOLDER
from tokenbridge.specs import IdentityProviderSpec, TLSSettings

from . import EXIT_OK, fail, parser

# --allow-private: loopback and RFC 1918. Link-local stays blocked (cloud metadata), as do IPv6 unique-local
# ranges (fd00:ec2::254 is one); TOKENBRIDGE_ALLOWED_NETWORKS adds anything else, as for the operator.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
ENTRA_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
    "sts.windows.net",
)

DESCRIPTION = """
Fetch an OpenID Provider Metadata URL (or an RFC 8414 authorization server metadata URL) and its JWKS with the
same checks and provider quirks as the operator, and print what the operator would fill into the
IdentityProvider's status: issuer, token endpoint, JWKS URI, and the usable keys (kid, algorithms), plus every
key it would skip and why.

The operator refuses loopback and private addresses unless they are in its allow-list; --allow-private does the
same here for loopback and RFC 1918 networks (TOKENBRIDGE_ALLOWED_NETWORKS is honoured as by the operator).
"""
EXAMPLES = """
tokenbridge discover https://dev-123456.okta.com/oauth2/default/.well-known/openid-configuration
tokenbridge discover https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration
tokenbridge discover https://my-tenant.eu.auth0.com/.well-known/openid-configuration --json
tokenbridge discover https://idp.internal:8443/.well-known/openid-configuration --allow-private --ca-file ca.pem
tokenbridge discover "$APISERVER/.well-known/openid-configuration" --type Kubernetes   # kubeconfig credentials
"""

HINTS = {
    "BlockedAddress": "the operator refuses private and loopback addresses too: for a private IdP add its network "
    "to the operator's allow-list (TOKENBRIDGE_ALLOWED_NETWORKS, the chart's allow-list) and "
    "pass --allow-private here",
    "InsecureURL": "use https; for a development IdP on plain http pass --allow-http here and set "
    "spec.allowInsecureHTTP: true (the operator and server also need "
    "TOKENBRIDGE_ALLOW_INSECURE_HTTP=true)",
    "InvalidURL": "give the full metadata URL, e.g. https://idp.example.com/.well-known/openid-configuration",
    "IssuerMismatch": "check that the URL is the provider's own metadata URL (Okta: the authorization server's, "
    "Entra: pass --type MicrosoftEntraID); to trust the document anyway set spec.issuer",
    "InvalidDiscoveryDocument": "the URL answered, but not with provider metadata: check the path",
    "DiscoveryUnavailable": "check that the URL is reachable from where the operator runs",
    "JWKSUnavailable": "the metadata names a jwks_uri that cannot be fetched: check it or set spec.jwksURI",
    "InvalidJWKS": "the jwks_uri does not return a JWK Set: set spec.jwksURI to the right URL",
    "NoUsableKeys": "none of the keys is for an allowed algorithm: see the skipped keys, and widen "
    "spec.allowedAlgorithms (--algorithm here) if the provider signs with another one",
    "CredentialsUnavailable": "--type Kubernetes uses your kubeconfig like the operator uses its own; set KUBECONFIG "
    "or --kubeconfig, or use --type OIDC for another cluster's issuer",
    "InvalidSpec": "for another cluster's ServiceAccount issuer use --type OIDC",
}
TLS_HINT = "the certificate is not trusted: pass the IdP's CA with --ca-file (spec.tls.caBundle in the resource)"


def guess_type(url: str) -> str:
    """The spec.type a URL's host suggests; Entra's issuer quirks depend on it, the others only name it."""
    host = (urlsplit(url).hostname or "").lower()
    if host in ENTRA_HOSTS:
        return api.IDP_ENTRA
    if host.endswith((".okta.com", ".oktapreview.com", ".okta-emea.com")):
        return api.IDP_OKTA
    if host.endswith(".auth0.com"):
        return api.IDP_AUTH0
    return api.IDP_OIDC


def key_type(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "OKP"
    return type(key).__name__


def report(metadata: ProviderMetadata, idp_type: str) -> dict[str, Any]:
    """The status fields the operator would write, plus the keys in detail."""
    keys = [
        {"kid": k.kid, "algorithms": sorted(k.algorithms), "type": key_type(k.key)}
        for ks in metadata.keys.by_kid.values()
        for k in ks
    ]
    return {
        "type": idp_type,
        "issuer": metadata.issuer,
        "tokenEndpoint": metadata.token_endpoint,
        "jwksURI": metadata.jwks_uri,
        "keyCount": len(metadata.keys),
        "keys": keys,
        "skippedKeys": list(metadata.keys.skipped),
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"type:           {result['type']}")
    print(f"issuer:         {result['issuer']}")
    if TENANT_PLACEHOLDER in result["issuer"]:
        print("                (a template: each token names its tenant in iss and tid)")
    print(f"token endpoint: {result['tokenEndpoint'] or '(none)'}")
    print(f"JWKS URI:       {result['jwksURI']}")
    print(f"usable keys:    {result['keyCount']}")
    for key in result["keys"]:
        print(f"  kid {key['kid']!s:<44} {', '.join(key['algorithms']):<20} {key['type']}")
    if result["skippedKeys"]:
        print(f"skipped keys:   {len(result['skippedKeys'])}")
        for reason in result["skippedKeys"]:
            print(f"  {reason}")


def main(argv: list[str]) -> int:
    p = parser("tokenbridge discover", DESCRIPTION, EXAMPLES)
    p.add_argument("url", metavar="URL", help="the metadata URL (.../.well-known/openid-configuration)")
    p.add_argument(
        "--type",
        choices=api.IDP_TYPES,
        help="spec.type; selects provider quirks (default: guessed from the host: Microsoft login hosts "
        "MicrosoftEntraID, *.okta.com Okta, *.auth0.com Auth0, else OIDC)",
    )
    p.add_argument("--ca-file", metavar="PEM", help="trust only this CA bundle (what spec.tls.caBundle would hold)")
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback and private (RFC 1918) addresses, as the operator's allow-list would",
    )
    p.add_argument(
        "--allow-http",
        action="store_true",
        help="allow http:// (spec.allowInsecureHTTP plus TOKENBRIDGE_ALLOW_INSECURE_HTTP); development only",
    )
    p.add_argument(
        "--algorithm",
        action="append",
        choices=api.ASYMMETRIC_ALGORITHMS,
        metavar="ALG",
        help="spec.allowedAlgorithms entry, repeatable (default: RS256..RS512, ES256..ES512)",
    )
    p.add_argument(
        "--kubeconfig",
        help="--type Kubernetes: the credentials to fetch with (default: KUBECONFIG, "
        "~/.kube/config), as the operator uses its own",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)

    idp_type = args.type or guess_type(args.url)
    tls = None
    if args.ca_file:
        try:
            with open(args.ca_file, encoding="utf-8") as f:
                tls = TLSSettings(ca_bundle=f.read())
        except OSError as exc:
            return fail(f"cannot read --ca-file: {exc}")
    spec = IdentityProviderSpec(
        type=idp_type,
        well_known_url=args.url,
        allow_insecure_http=args.allow_http,
        tls=tls,
        allowed_algorithms=tuple(args.algorithm or api.DEFAULT_ALLOWED_ALGORITHMS),
    )
    try:
        policy = FetchPolicy.from_env()
    except ValueError as exc:
        return fail(str(exc), "fix TOKENBRIDGE_ALLOWED_NETWORKS / TOKENBRIDGE_ALLOW_INSECURE_HTTP")
    policy = dataclasses.replace(
        policy,
        allow_http=args.allow_http or policy.allow_http,
        allowed_networks=policy.allowed_networks + (PRIVATE_NETWORKS if args.allow_private else ()),
    )
    credentials = None
    if idp_type == api.IDP_KUBERNETES:
        try:
            credentials = KubeCredentials.load(args.kubeconfig)
        except Exception as exc:  # the kubernetes client raises several unrelated types for a missing config
            return fail(f"cannot load Kubernetes credentials: {exc}", HINTS["CredentialsUnavailable"])
    if not args.json:
        print(f"fetching {args.url} ...", file=sys.stderr)
    try:
        metadata = discover(spec, policy, credentials=credentials)
    except DiscoveryError as exc:
        hint = TLS_HINT if "TLS" in exc.message else HINTS.get(exc.reason)
        print(f"{exc.reason} ({exc.stage}): {exc.message}", file=sys.stderr)
        return fail(f"the operator would set reason {exc.reason} and not use this identity provider", hint)
    result = report(metadata, idp_type)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return EXIT_OK
