"""HTTPS/WSS on every server (--ssl-certfile/--ssl-keyfile) with a certificate from
scripts/make_cert.sh: the TTS server as the example (all three share run_service)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port


def make_cert(out: Path) -> tuple[Path, Path]:
    done = subprocess.run([str(ROOT / "scripts" / "make_cert.sh"), "--out", str(out), "127.0.0.1",
                           "localhost"], capture_output=True, text=True, timeout=60, check=True)
    assert "wrote" in done.stdout
    assert (out / "key.pem").stat().st_mode & 0o077 == 0  # the key is its owner's only
    return out / "cert.pem", out / "key.pem"


def wait_https(port: int, context: ssl.SSLContext, process: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5, context=context) as r:
                return dict(json.loads(r.read()))
        except OSError:
            time.sleep(0.3)
    raise AssertionError(log.read_text()[-3000:])


@pytest.mark.slow
def test_tts_server_serves_https_with_a_made_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs")
    port, log = free_port(), tmp_path / "tts.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "web_demo.server.tts_server", "--host", "127.0.0.1", "--port", str(port),
             "--engine", "espeak-ng", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))  # verifies the name too (127.0.0.1)
        assert wait_https(port, trusted, process, log)["status"] in ("healthy", "loading")
        with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        # a client that does not trust it refuses the self-signed certificate
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5,
                                   context=ssl.create_default_context())
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
    assert "serving HTTPS and WSS" in log.read_text()


def test_bad_tls_flags_stop_the_start(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path / "certs")
    base = [sys.executable, "-m", "web_demo.server.tts_server", "--host", "127.0.0.1",
            "--port", str(free_port()), "--engine", "espeak-ng"]
    cases = [(["--ssl-certfile", str(cert)], "give --ssl-certfile and --ssl-keyfile together"),
             (["--ssl-certfile", str(cert), "--ssl-keyfile", str(tmp_path / "missing.pem")],
              "cannot load the TLS certificate")]
    for extra, message in cases:
        done = subprocess.run([*base, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
