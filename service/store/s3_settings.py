"""How to reach S3-compatible object storage: the settings (from flags or the environment),
the ``s3://BUCKET/PREFIX`` location, and the boto3 client built from them.

boto3 is an optional dependency (the ``s3`` extra): it is imported only when a client is built,
so that this module (and the server's flags) work without it.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import StoreError, StoreInputError
from .names import validate_record_key

#: Environment variables read when no settings are passed (the server's flags set the same).
ENV_NAMES = {
    "endpoint_url": "CHARLSTM_S3_ENDPOINT_URL",
    "region": "CHARLSTM_S3_REGION",
    "access_key_id": "CHARLSTM_S3_ACCESS_KEY_ID",
    "secret_access_key": "CHARLSTM_S3_SECRET_ACCESS_KEY",
    "single_writer": "CHARLSTM_S3_SINGLE_WRITER",
}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), as flags and environment variables say it."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false (got {text!r})")


@dataclass(frozen=True)
class S3Settings:
    """How to reach the object store. Unset fields fall back to boto3's own configuration: the
    standard ``AWS_*`` environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...) and ``~/.aws``."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    #: Allow a store without conditional writes, promising that only one process writes to it.
    single_writer: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Settings":
        """Settings from the ``CHARLSTM_S3_*`` environment variables."""
        env = os.environ if environ is None else environ
        values: dict = {name: env.get(var) or None for name, var in ENV_NAMES.items()}
        values["single_writer"] = parse_bool(values["single_writer"] or "false")
        return cls(**values)


def parse_location(location: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix ending in '/' or empty); StoreError if malformed."""
    rest = location[len("s3://"):] if location.startswith("s3://") else location
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise StoreError(f"store location {location!r}: {bucket!r} is not a valid bucket name "
                         "(3-63 characters: lower-case letters, digits, '.' and '-')")
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_record_key(prefix)
        except StoreInputError as exc:
            raise StoreError(f"store location {location!r}: the prefix {prefix!r} is not "
                             f"usable: {exc}") from None
    return bucket, prefix + "/" if prefix else ""


def _import_boto3():
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise StoreError("an s3:// store needs boto3, which is not installed: "
                         "pip install 'charlstm[s3]'") from None
    return boto3, botocore.config


def botocore_errors() -> tuple[type[Exception], ...]:
    import botocore.exceptions

    return (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


@functools.lru_cache(maxsize=16)
def make_client(settings: S3Settings, env_endpoint: str | None):
    """A boto3 client; one per settings, shared by the stores of a process (boto3 clients are
    thread-safe, and building one costs a few hundred milliseconds)."""
    boto3, config = _import_boto3()
    options = {}
    if settings.endpoint_url or env_endpoint:
        # S3-compatible servers on a plain host:port do not resolve bucket subdomains.
        options["s3"] = {"addressing_style": "path"}
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config.Config(retries={"mode": "standard", "max_attempts": 4},
                             connect_timeout=5, read_timeout=60, **options),
    )
