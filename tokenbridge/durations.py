"""Durations as the CRDs spell them: Go/Kubernetes style ("90s", "5m", "1h30m", "250ms")."""

from __future__ import annotations

import re

# Same pattern the CRD schemas use, so anything the API server admits parses here.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError with the offending text when it is not a duration."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as '90s', '5m' or '1h30m'")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
