"""The spec's CEL policy (``claimMappings``, ``condition``), checked first by the IdP and application reconcilers.

It is compiled with the exchange server's own function, ``tokenbridge.policy.compile_policy``, so a resource the
operator reports Ready has a policy the server will serve, and one it reports ``InvalidExpression`` is one the
server refuses to serve at all. Messages name the field and the problem, never token contents.
"""

from __future__ import annotations

from tokenbridge.policy import PolicyError, compile_policy
from tokenbridge.specs import IdentityProviderSpec, OAuthApplicationSpec

INVALID_EXPRESSION = "InvalidExpression"


def invalid_expression(spec: IdentityProviderSpec | OAuthApplicationSpec, kind: str) -> str | None:
    """Why the spec's expressions cannot be served ("<field>: <problem>"), or None when they compile."""
    try:
        compile_policy(spec, kind=kind)
    except PolicyError as exc:
        return f"{exc.field}: {exc.message} (fix the spec)"
    return None
