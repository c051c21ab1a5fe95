"""Tokenbridge's tests: a package so that the helpers in tests/support import by name (``tests.support.idp``)."""
