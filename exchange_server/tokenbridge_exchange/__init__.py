"""The token exchange server (``tokenbridge serve``): a Falcon WSGI app under gunicorn.

Requests are answered from an immutable, prebuilt :mod:`.snapshot` of the configuration that a source
(:mod:`.sources.kubernetes` or :mod:`.sources.manifests`) replaces whole on every change; IdP keys come from
:mod:`.jwks_cache`. :mod:`.token_endpoint` (RFC 8693, RFC 7523, client credentials) validates external JWTs with
:mod:`.assertions` and signs :mod:`.access_tokens`; :mod:`.errors` is the one shape every failure leaves in.
"""
