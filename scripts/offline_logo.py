"""Serve the credentials block's logo on this machine, for a browser that has no network.

The block type's logo URL points at the SVG this package ships, as GitHub serves it
(`AtomscaleCredentials._logo_url`; Prefect only takes http(s) URLs there). A headless
Chromium without network shows a broken image instead. `serve_logo()` serves the shipped
file over HTTPS on a free loopback port, with a self-signed certificate made for the
occasion, and gives the Chromium flags that send the logo URL's host there:

    from offline_logo import serve_logo

    with serve_logo() as flags:
        subprocess.run(["chromium", "--headless", *flags, "--screenshot=...", url])

Run it alone to keep it serving until Ctrl-C (it prints the flags):

    python scripts/offline_logo.py
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prefect_atomscale import AtomscaleCredentials

LOGO_URL = str(AtomscaleCredentials._logo_url)


def _logo() -> tuple[str, bytes]:
    """The logo URL's path and the shipped file it names (the part after the branch)."""
    path = urlsplit(LOGO_URL).path
    # /<owner>/<repository>/<branch>/prefect_atomscale/_assets/atomscale-logo.svg
    package, *inside = path.split("/")[4:]
    return path, files(package).joinpath(*inside).read_bytes()


def _self_signed(host: str, folder: Path) -> tuple[Path, Path]:
    """A certificate for `host` and 127.0.0.1, valid for a day, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "logo-cert.pem", folder / "logo-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _handler(path: str, svg: bytes) -> type[http.server.BaseHTTPRequestHandler]:
    class LogoHandler(http.server.BaseHTTPRequestHandler):
        """Answers the logo's path with the SVG, anything else with 404."""

        def do_GET(self) -> None:
            """Send the logo, or 404."""
            found = urlsplit(self.path).path == path
            body = svg if found else b"not found\n"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "image/svg+xml" if found else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Keep quiet: a screenshot run's output is about the screenshots."""

    return LogoHandler


@contextmanager
def serve_logo() -> Iterator[list[str]]:
    """Serve the shipped logo over HTTPS on loopback, as its URL's host would.

    Yields:
        Chromium flags that make Chromium fetch the logo URL from this server:
        `--host-resolver-rules=MAP <host> 127.0.0.1:<port>` and
        `--ignore-certificate-errors` (the certificate is self-signed).
    """
    host = urlsplit(LOGO_URL).hostname or ""
    path, svg = _logo()
    with tempfile.TemporaryDirectory(prefix="offline-logo-") as folder:
        cert_file, key_file = _self_signed(host, Path(folder))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(path, svg))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, name="offline-logo", daemon=True)
        thread.start()
        try:
            yield [
                f"--host-resolver-rules=MAP {host} 127.0.0.1:{port}",
                "--ignore-certificate-errors",
            ]
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def main() -> None:
    """Serve until Ctrl-C, printing the flags to give Chromium."""
    with serve_logo() as flags:
        print(" ".join(f"'{flag}'" for flag in flags), flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
