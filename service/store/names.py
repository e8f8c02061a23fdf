"""Which model and label names the store accepts.

A name becomes a folder (locally) or a key prefix (object storage), so the rule is strict: ASCII
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 64 characters,
and never ``..``. That rules out path traversal, hidden files, separators and NUL by construction.
Names that differ only in letter case would share a folder on case-insensitive filesystems, so a
new name that case-folds onto an existing one is refused too (see :func:`check_no_case_clash`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import InvalidName

MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = (
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}: ASCII letters, digits, '.', '_' and '-', starting with a "
    "letter or digit, at most 64 characters, without '..'"
)
#: The alias that always means the highest complete version; it cannot be used as a label.
LATEST = "latest"


def _shown(name: str) -> str:
    """repr() of a name, shortened so that a megabyte of garbage does not become the message."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_name(name: str, what: str = "model") -> str:
    """Return ``name`` unchanged if it is an acceptable ``what`` name, else raise :class:`InvalidName`.

    The message says which part of the rule was broken and repeats the whole rule.
    """
    if not isinstance(name, str):
        raise InvalidName(what, f"{what} name must be a string (got {type(name).__name__})")
    problem = None
    if not name:
        problem = "is empty"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is {len(name)} characters long"
    elif "\x00" in name:
        problem = "contains NUL"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif not NAME_PATTERN.fullmatch(name):
        problem = "has a character outside the allowed set or does not start with a letter or digit"
    if problem is not None:
        raise InvalidName(what, f"{what} name {_shown(name)} {problem}; allowed: {NAME_RULE}")
    return name


def validate_label(label: str) -> str:
    """Validate a label name: the model-name rule, and not the reserved alias ``latest``."""
    validate_name(label, "label")
    if label.lower() == LATEST:
        raise InvalidName("label", f"label name {label!r} is reserved: 'latest' always means the "
                          "highest complete version and cannot be set or removed")
    return label


def check_no_case_clash(name: str, existing: Iterable[str], what: str = "model") -> None:
    """Refuse a *new* ``name`` that equals one of ``existing`` apart from letter case."""
    folded = name.lower()
    for other in existing:
        if other != name and other.lower() == folded:
            raise InvalidName(what, f"{what} name {name!r} differs only in letter case from the "
                              f"existing {what} {other!r}; names must differ in more than case")


# --- Record keys ---------------------------------------------------------------------------------
# A record key is a relative path: '/'-separated segments, each a name by the rule above but up to
# 128 characters (content hashes fit). It becomes a file name locally and an object key on S3.

MAX_KEY_LENGTH = 512
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KEY_RULE = ("'/'-separated segments of [A-Za-z0-9._-], each starting with a letter or digit, at "
            f"most 128 characters, without '..'; at most {MAX_KEY_LENGTH} characters in all")


def _key_problem(key: str, *, prefix: bool) -> str | None:
    if len(key) > MAX_KEY_LENGTH:
        return f"is {len(key)} characters long"
    segments = key.split("/")
    if prefix:
        # A prefix may end inside a segment ("jobs/job-") or at a separator ("jobs/"); only its
        # last segment may be partial or empty.
        *whole, last = segments
        if last and not _KEY_SEGMENT.fullmatch(last):
            return f"has a bad segment {_shown(last)}"
        if ".." in last:
            return "contains '..'"
    else:
        whole = segments
    for segment in whole:
        if not segment:
            return "has an empty segment"
        if ".." in segment:
            return "contains '..'"
        if not _KEY_SEGMENT.fullmatch(segment):
            return f"has a bad segment {_shown(segment)}"
    return None


def validate_record_key(key: str) -> str:
    """Return ``key`` unchanged if it is an acceptable record key, else raise :class:`InvalidName`."""
    if not isinstance(key, str):
        raise InvalidName("key", f"record key must be a string (got {type(key).__name__})")
    problem = "is empty" if not key else _key_problem(key, prefix=False)
    if problem is not None:
        raise InvalidName("key", f"record key {_shown(key)} {problem}; allowed: {KEY_RULE}")
    return key


def validate_record_prefix(prefix: str) -> str:
    """Validate a prefix for listing records: empty, or the start of a valid key."""
    if not isinstance(prefix, str):
        raise InvalidName("prefix", f"record prefix must be a string (got {type(prefix).__name__})")
    problem = None if not prefix else _key_problem(prefix, prefix=True)
    if problem is not None:
        raise InvalidName("prefix", f"record prefix {_shown(prefix)} {problem}; allowed: the "
                          f"start of a key, {KEY_RULE}")
    return prefix
