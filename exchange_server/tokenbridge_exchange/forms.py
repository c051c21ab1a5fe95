"""Reading an ``application/x-www-form-urlencoded`` request body (RFC 6749 §3.2, Appendix B) with a size cap.

The cap is enforced while reading, before anything is decoded. Parameters other than the ones RFC 8693 lets a
client repeat (``audience``, ``resource``) must appear at most once; empty values count as absent.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import falcon

from .errors import InvalidRequest, OAuthError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
REPEATABLE = frozenset({"audience", "resource"})


class RequestTooLarge(OAuthError):
    status = 413


def read_form(req: falcon.Request, max_bytes: int) -> dict[str, list[str]]:
    """Parameter name -> values (a single value except for repeatable parameters)."""
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"the request body must be {FORM_CONTENT_TYPE}, not {req.content_type or 'empty'}")
    if req.content_length is not None and req.content_length > max_bytes:
        raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
    body = req.bounded_stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=False, strict_parsing=False, errors="strict", max_num_fields=64
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the request body is not a valid form: {exc}") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        values = form.setdefault(name, [])
        if values and name not in REPEATABLE:
            raise InvalidRequest(f"parameter {name} is repeated")
        values.append(value)
    return form


def single(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def required(form: dict[str, list[str]], name: str) -> str:
    value = single(form, name)
    if value is None:
        raise InvalidRequest(f"missing parameter {name}")
    return value
