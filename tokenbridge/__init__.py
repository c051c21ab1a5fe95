"""Tokenbridge: OAuth 2.0 token exchange for external identity providers.

This package is the core shared by the operator (``tokenbridge_operator``) and the exchange server
(``tokenbridge_exchange``): API names, key handling and outbound fetching live here once. It imports neither of
them, nor the command line (``tokenbridge_cli``): see ``[tool.importlinter]`` in pyproject.toml.
"""
