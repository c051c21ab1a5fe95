"""Step records of one decision, for ``explain``; the token endpoint passes :data:`NO_TRACE`, which records nothing.

Every check of the pipeline runs through :func:`step`: it returns a short description of what passed, or raises
the :class:`~tokenbridge_exchange.errors.OAuthError` the client will see. Details never contain a token or a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .errors import OAuthError

T = TypeVar("T")

PASS, FAIL, SKIP = "pass", "fail", "skip"


class Trace:
    """Records nothing (the token endpoint)."""

    __slots__ = ()

    def record(self, name: str, result: str, detail: str) -> None:
        pass


NO_TRACE = Trace()


class Recorder(Trace):
    """Keeps every step, in order (explain)."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps: list[dict[str, str]] = []

    def record(self, name: str, result: str, detail: str) -> None:
        self.steps.append({"step": name, "result": result, "detail": detail})

    @property
    def failed(self) -> bool:
        return any(s["result"] == FAIL for s in self.steps)


def step(trace: Trace, name: str, check: Callable[..., tuple[T, str]], *args: Any) -> T:
    """Run ``check(*args) -> (value, detail)``; record it as passed, or as failed when it raises."""
    try:
        value, detail = check(*args)
    except OAuthError as exc:
        trace.record(name, FAIL, exc.description)
        raise
    trace.record(name, PASS, detail)
    return value
