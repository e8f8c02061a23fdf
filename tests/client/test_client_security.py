"""TLS (``--ca``/``tls=``) and the bearer token (``--token``/``CHARLSTM_TOKEN``/``token=``)
against a real server that requires both, with a self-signed certificate made by openssl."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from charlstm.client import NO_RETRY, CharLstmClient, UnauthenticatedError, UnavailableError

TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A TLS server requiring TOKEN: its ``localhost:port`` target and its certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    from charlstm.service.config import ServerConfig
    from charlstm.service.server import create_server

    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=-1, store=str(root / "store"),
        token=TOKEN, tls_cert=str(cert), tls_key=str(key), grace_period=0.5, demo_models=False,
    )  # fmt: skip
    running = create_server(config)
    try:
        yield f"localhost:{running.port}", cert
    finally:
        running.stop(0.5)


def charlstm(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if token is not None:
        env["CHARLSTM_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "charlstm.client.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_with_ca_and_token_from_the_environment(secure: tuple[str, Path]) -> None:
    target, cert = secure
    result = charlstm("models", "--server", target, "--ca", str(cert), "--json", token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == []
    flag = charlstm("health", "--server", target, "--ca", str(cert), "--token", TOKEN)
    assert flag.returncode == 0 and flag.stdout.strip() == "SERVING"


def test_cli_without_the_token_is_refused_in_one_line(secure: tuple[str, Path]) -> None:
    target, cert = secure
    result = charlstm("models", "--server", target, "--ca", str(cert))
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAUTHENTICATED: ") and result.stderr.count("\n") == 1
    wrong = charlstm("models", "--server", target, "--ca", str(cert), "--token", "nope")
    assert wrong.stderr.strip() == "error: UNAUTHENTICATED: invalid token"


def test_library_tls_and_token(secure: tuple[str, Path]) -> None:
    target, cert = secure
    with CharLstmClient(target, tls=cert.read_bytes(), token=TOKEN) as client:
        assert client.list_models() == []
    with CharLstmClient(target, tls=cert.read_bytes()) as client, pytest.raises(UnauthenticatedError):
        client.list_models()
    # Plaintext to a TLS port, or TLS without trusting the certificate, never gets through.
    for tls in (False, True):
        with CharLstmClient(target, tls=tls, token=TOKEN, retry=NO_RETRY) as client:
            with pytest.raises(UnavailableError):
                client.list_models()
