"""Tokenbridge: OAuth 2.0 token exchange for external identity providers.

This package is the core shared by the operator (``tokenbridge_operator``) and the exchange server
(``tokenbridge_exchange``): API names, key handling and outbound fetching live here once.
"""
