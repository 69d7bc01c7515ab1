"""Reading the bytes an untrusted URI names, under an :class:`~hitmodels.config.InputPolicy`.

Manifest rows and requests name audio as a local path, ``file://``, ``s3://bucket/key`` or ``http(s)://``.
Each is checked before anything is opened: local paths are resolved (symlinks, ``..``) and must lie under an
allowed root and be regular files; S3 buckets and HTTP hosts must be allowed by name; HTTP connects only to
the address it checked (no DNS rebinding between check and connect), refuses loopback, link-local and private
addresses unless the policy allows them, and follows redirects only on the same host. Reads stop at
``max_audio_bytes``. Refusals look the same whether the target exists or not, so errors reveal nothing about
the machine, and URIs in errors are redacted (userinfo and query strings, where presigned signatures live).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import stat
import time
import urllib.parse
from pathlib import Path

from .config import InputPolicy

_CHUNK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchError(Exception):
    """A URI that could not be read. ``reason``: ``missing``, ``empty``, ``fetch_failed``, ``uri_not_allowed``
    or ``too_large``; the message names the (redacted) URI."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def redact(uri: str) -> str:
    """``uri`` fit for an error message or a log: no userinfo, query string or fragment (``?…`` marks a
    dropped query). Local paths are returned as they are. Never raises, whatever the text."""
    text = str(uri)
    try:
        parsed = urllib.parse.urlsplit(text)
        if not parsed.scheme or parsed.scheme == "file" or len(parsed.scheme) == 1:
            return text
        host = parsed.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        port = parsed.port
    except ValueError:  # an unparsable host or port: keep only the scheme
        return text.split(":", 1)[0] + "://…"
    if port:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "…" if parsed.query else "", ""))


def _under(path: Path, roots: tuple[str, ...]) -> bool:
    return any(path.is_relative_to(Path(os.path.realpath(r))) for r in roots)


def check_local(uri: str, policy: InputPolicy) -> Path:
    """The resolved path of a local or ``file://`` URI if the policy allows it; raises :class:`FetchError`."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise FetchError("uri_not_allowed", f"{redact(uri)}: file URIs must name this machine")
        raw = urllib.parse.unquote(parsed.path)
    else:
        raw = uri
    path = Path(os.path.realpath(os.path.abspath(raw)))
    if not _under(path, policy.local_roots):
        raise FetchError("uri_not_allowed", f"{uri} is outside the allowed local roots (widen with --allow-root "
                                            "or HITMUSIC_ALLOWED_ROOTS)")
    return path


def _read_local(path: Path, uri: str, cap: int) -> bytes:
    # opened without following a last-component symlink and without blocking on a FIFO, then checked on the
    # open file: a file swapped for a link or a pipe after check_local cannot be read through
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise FetchError("missing", f"file not found: {uri}") from None
    except OSError as exc:
        raise FetchError("uri_not_allowed", f"{uri} cannot be opened as a regular file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FetchError("uri_not_allowed", f"{uri} is not a regular file")
        if st.st_size > cap:
            raise FetchError("too_large", f"{uri} has {st.st_size} bytes, more than the {cap} allowed")
        data = fh.read(cap + 1)
    if len(data) > cap:  # grew while we read it
        raise FetchError("too_large", f"{uri} has more than the {cap} bytes allowed")
    return data


def _host_allowed(host: str, port: int, allowed: tuple[str, ...]) -> bool:
    """Whether ``host:port`` matches an entry ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    host = host.lower()
    for entry in (e.lower() for e in allowed):
        if entry.startswith("["):
            name, _, rest = entry[1:].partition("]")
            want = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            name, want = entry.split(":")
        else:
            name, want = entry, ""
        if name == host and (not want or want == str(port)):
            return True
    return False


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def public_address(ip: str) -> bool:
    """Whether an address is on the public internet (``is_global``: not loopback, link-local, private,
    shared/CGNAT 100.64/10, reserved, multicast or unspecified). IPv6 forms that carry an IPv4 address
    (IPv4-mapped, 6to4, Teredo, NAT64 64:ff9b::/96) are judged by that address too."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    inner: list[ipaddress.IPv4Address] = []
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            inner.append(addr.ipv4_mapped)
        if addr.sixtofour is not None:
            inner.append(addr.sixtofour)
        if addr.teredo is not None:
            inner.extend(addr.teredo)
        if addr in _NAT64:
            inner.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return (addr.is_global and not addr.is_multicast) and all(a.is_global and not a.is_multicast for a in inner)


def check_http(uri: str, policy: InputPolicy) -> tuple[urllib.parse.SplitResult, str]:
    """The parsed URL and the one address to connect to, if the policy allows ``uri``; raises FetchError."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.hostname:
        raise FetchError("uri_not_allowed", f"{redact(uri)} names no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not _host_allowed(parsed.hostname, port, policy.http_hosts):
        raise FetchError("uri_not_allowed", f"{redact(uri)}: host {parsed.hostname} is not an allowed HTTP host "
                                            "(widen with --allow-host or HITMUSIC_ALLOWED_HTTP_HOSTS)")
    try:
        infos = socket.getaddrinfo(parsed.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError("fetch_failed", f"{redact(uri)}: cannot resolve {parsed.hostname}: {exc}") from None
    addresses = [info[4][0] for info in infos]
    refused = [a for a in addresses if not public_address(a)]
    if refused and not policy.allow_private_http:
        raise FetchError("uri_not_allowed", f"{redact(uri)}: {parsed.hostname} resolves to a loopback, link-local "
                                            "or private address (allow with --allow-private-http)")
    return parsed, addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to the address that was checked, whatever DNS says by now."""

    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self):
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, ip: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self):
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _read_capped(read, uri: str, cap: int, deadline: float | None = None) -> bytes:
    """Chunks of ``read(n)`` until EOF; ``too_large`` past ``cap`` bytes, ``fetch_failed`` past ``deadline``
    (``time.monotonic()``), which bounds a server that trickles a byte per timeout."""
    chunks, total = [], 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise FetchError("fetch_failed", f"{redact(uri)}: not read within the time allowed")
        chunk = read(min(_CHUNK, cap + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            raise FetchError("too_large", f"{redact(uri)} sends more than the {cap} bytes allowed")


def _read_http(uri: str, policy: InputPolicy) -> bytes:
    cap = policy.max_audio_bytes
    deadline = time.monotonic() + policy.fetch_total_s
    for _ in range(policy.max_redirects + 1):
        parsed, ip = check_http(uri, policy)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        conn_cls = _PinnedHTTPS if parsed.scheme == "https" else _PinnedHTTP
        conn = conn_cls(parsed.hostname, ip, port, policy.fetch_timeout_s)
        try:
            target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
            conn.request("GET", target, headers={"User-Agent": "hitmusic", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                location = urllib.parse.urljoin(uri, resp.getheader("Location", ""))
                nxt = urllib.parse.urlsplit(location)
                if (nxt.scheme, nxt.hostname, nxt.port) != (parsed.scheme, parsed.hostname, parsed.port):
                    raise FetchError("uri_not_allowed", f"{redact(uri)} redirects to another host or scheme "
                                                        f"({redact(location)}): not followed")
                uri = location
                continue
            if resp.status != 200:
                raise FetchError("fetch_failed", f"{redact(uri)}: HTTP {resp.status} {resp.reason}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise FetchError("too_large", f"{redact(uri)} has {length} bytes, more than the {cap} allowed")
            return _read_capped(resp.read1, uri, cap, deadline)  # read1: whatever has arrived, then check
        finally:
            conn.close()
    raise FetchError("fetch_failed", f"{redact(uri)}: more than {policy.max_redirects} redirects")


def _read_s3(uri: str, policy: InputPolicy) -> bytes:
    import boto3

    parsed = urllib.parse.urlsplit(uri)
    bucket, key = parsed.hostname or "", parsed.path.lstrip("/")
    if parsed.netloc != bucket or bucket not in policy.s3_buckets:  # userinfo, a port or a case trick
        raise FetchError("uri_not_allowed", f"{redact(uri)}: bucket {bucket!r} is not allowed (widen with "
                                            "--allow-bucket or HITMUSIC_ALLOWED_S3_BUCKETS)")
    if any(part in (".", "..") for part in key.split("/")):  # some S3-compatible servers normalise them
        raise FetchError("uri_not_allowed", f"{redact(uri)}: '.' and '..' are not allowed in S3 keys")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    from botocore.config import Config

    from .storage import s3_max_attempts

    retries = Config(retries={"mode": "standard", "max_attempts": s3_max_attempts()})
    obj = boto3.client("s3", endpoint_url=endpoint, config=retries).get_object(Bucket=bucket, Key=key)
    body = obj["Body"]
    try:
        if obj.get("ContentLength", 0) > policy.max_audio_bytes:
            raise FetchError("too_large", f"{redact(uri)} has {obj['ContentLength']} bytes, more than the "
                                          f"{policy.max_audio_bytes} allowed")
        return _read_capped(body.read, uri, policy.max_audio_bytes)
    finally:
        body.close()


def fetch(uri: str, policy: InputPolicy) -> bytes:
    """The bytes ``uri`` names, if ``policy`` allows it and they fit its byte cap; raises :class:`FetchError`
    (never another exception) with a reason and a redacted URI."""
    if not uri:
        raise FetchError("missing", "no audio URI given")
    try:
        try:
            scheme = urllib.parse.urlsplit(uri).scheme
        except ValueError:
            raise FetchError("uri_not_allowed", f"{redact(uri)} is not a valid URI") from None
        if scheme == "s3":
            data = _read_s3(uri, policy)
        elif scheme in ("http", "https"):
            data = _read_http(uri, policy)
        elif scheme in ("", "file"):
            data = _read_local(check_local(uri, policy), uri, policy.max_audio_bytes)
        else:
            raise FetchError("uri_not_allowed", f"{redact(uri)}: scheme {scheme!r} is not supported "
                                                "(local path, file://, s3:// or http(s)://)")
    except FetchError:
        raise
    except Exception as exc:  # network and S3 errors come in many classes; all mean "could not fetch"
        # the exception's own text can carry the full URL (signatures included): only its class and code
        response = getattr(exc, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        raise FetchError("fetch_failed", f"{redact(uri)}: {type(exc).__name__}"
                                         + (f" ({code})" if code else "")) from None
    if not data:
        raise FetchError("empty", f"{redact(uri)} has 0 bytes")
    return data


def add_policy_arguments(p) -> None:
    """The ``--allow-*`` and bound flags of every job that reads URIs from rows (extract, score)."""
    d = InputPolicy()
    g = p.add_argument_group("input policy", "what rows may make the job read, and how much (see README, Security)")
    g.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                   help="also read local audio under DIR (default: the manifest's directory and $HITMUSIC_HOME; "
                        "repeatable)")
    g.add_argument("--allow-bucket", action="append", default=[], metavar="NAME",
                   help="also read s3://NAME/... (default: the manifest's own bucket; repeatable)")
    g.add_argument("--allow-host", action="append", default=[], metavar="HOST[:PORT]",
                   help="read http(s) audio from HOST (default: no host; repeatable)")
    g.add_argument("--allow-private-http", action="store_true",
                   help="let allowed HTTP hosts resolve to loopback, link-local or private addresses")
    g.add_argument("--max-audio-mb", type=float, default=d.max_audio_bytes / 2**20,
                   help=f"bytes read per audio file, in MiB (default {d.max_audio_bytes / 2**20:.0f})")
    g.add_argument("--max-duration", type=float, default=d.max_duration_s,
                   help=f"longest audio accepted, seconds (default {d.max_duration_s:.0f}; longer is refused)")
    g.add_argument("--max-lyric-chars", type=int, default=d.max_lyric_chars,
                   help=f"longest lyrics accepted, characters (default {d.max_lyric_chars})")
    g.add_argument("--max-lyric-lines", type=int, default=d.max_lyric_lines,
                   help=f"longest lyrics accepted, lines (default {d.max_lyric_lines})")


def policy_from_args(args, manifest) -> InputPolicy:
    """The :class:`InputPolicy` of a job reading ``manifest`` with :func:`add_policy_arguments`' flags."""
    return InputPolicy.for_manifest(
        manifest, roots=tuple(args.allow_root), buckets=tuple(args.allow_bucket), hosts=tuple(args.allow_host),
        **({"allow_private_http": True} if args.allow_private_http else {}),
        max_audio_bytes=int(args.max_audio_mb * 2**20), max_duration_s=args.max_duration,
        max_lyric_chars=args.max_lyric_chars, max_lyric_lines=args.max_lyric_lines)
