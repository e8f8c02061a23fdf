"""Argument checks every backend's records API shares, so that both refuse the same things with
the same messages."""

from __future__ import annotations

from .errors import StoreInputError
from .names import validate_record_key


def checked_write(key: str, data: object, if_match: object, if_absent: object) -> bytes:
    """Validate a ``put_record`` call; return ``data`` as bytes."""
    validate_record_key(key)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StoreInputError("data", f"record data must be bytes (got {type(data).__name__})")
    check_etag(if_match)
    if not isinstance(if_absent, bool):
        raise StoreInputError("if_absent", "if_absent must be True or False "
                              f"(got {type(if_absent).__name__})")
    if if_absent and if_match is not None:
        raise StoreInputError("if_match", "if_match and if_absent exclude each other: a record "
                              "cannot both exist with an etag and not exist")
    return bytes(data)


def check_etag(if_match: object) -> None:
    if if_match is not None and (not isinstance(if_match, str) or not if_match):
        raise StoreInputError("if_match", "if_match must be an etag returned by get_record or "
                              f"put_record (got {if_match!r})")
