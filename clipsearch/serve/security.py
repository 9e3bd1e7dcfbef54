"""The gallery's guard: every request passes here before any route sees it.

A photo library is private, and a local web server is reachable by every web page the user opens
(through their browser) and by every process on the machine. So, in order:

- Host header: only localhost names, IP literals and the name the server was explicitly bound to.
  DNS rebinding needs a hostname the attacker controls that resolves to 127.0.0.1; its requests
  carry that name, and are refused.
- Token: a random secret printed in the URL (`?token=…`), exchanged on the first visit for an
  HttpOnly, SameSite=Strict cookie (as Jupyter does), then the URL is redirected without it so it
  does not linger in the address bar. Scripts may send `Authorization: Bearer TOKEN` instead.
- CSRF: any method but GET/HEAD needs the `X-CSRF-Token` header (derived from the token, given to
  the page in a meta tag) and, when the browser sends an Origin, the server's own origin. A form or
  fetch from another site can send neither the header nor a same-origin Origin.
- No CORS: no Access-Control-* header is ever sent, and preflights are refused, so other origins
  cannot read a single byte.
- Headers on every response: a strict Content-Security-Policy (own scripts and styles only, no
  inline code, no frames), nosniff, no referrer, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "clipsearch_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'none'; object-src 'none'; media-src 'none'; frame-src 'none'; "
       "worker-src 'none'; manifest-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_for(token: str) -> str:
    """The CSRF token for a session token: deterministic, so any tab of the gallery has the same one."""
    return hmac.new(token.encode(), b"clipsearch-csrf", hashlib.sha256).hexdigest()


def host_allowed(host_header: str, extra: Iterable[str] = ()) -> bool:
    """Whether a Host header names this server: localhost, an IP literal, or a name given by --host."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8765
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if not name:
        return False
    if name in LOCAL_NAMES or name in {e.lower() for e in extra}:
        return True
    try:
        ipaddress.ip_address(name)  # an IP literal cannot be rebound by DNS
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware enforcing the rules in this module's docstring on every HTTP request."""

    def __init__(self, app: ASGIApp, token: str, extra_hosts: Iterable[str] = (), cookie: str = COOKIE) -> None:
        self.app = app
        self.token = token
        # Cookies are per host, not per port: two galleries on one machine need two names (as Jupyter's).
        self.cookie = cookie
        self.csrf = csrf_for(token)
        self.extra_hosts = tuple(extra_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets: nothing here needs them
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"].upper()
        if not host_allowed(headers.get("host", ""), self.extra_hosts):
            await _plain(send, 403, "refused: unknown Host header (DNS rebinding protection)")
            return
        if method == "OPTIONS":  # a CORS preflight: never answered, so no other origin gets through
            await _plain(send, 405, "method not allowed")
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and method in SAFE_METHODS:
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                await _plain(send, 401, "this link's token is wrong or from an older run of `clipsearch serve`; "
                             "open the link it printed")
                return
            # Swap the token in the URL for a cookie, and drop it from the address bar.
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            await _respond(send, 303, b"", [(b"location", location.encode("latin-1")),
                                            (b"set-cookie", cookie.encode("latin-1"))])
            return
        if not self._authorised(headers):
            await _plain(send, 401, "clipsearch serve needs its token: open the link it printed "
                         "(http://…/?token=…)")
            return
        if method not in SAFE_METHODS:
            sent = headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), self.csrf.encode()):
                await _plain(send, 403, "refused: missing or wrong CSRF token")
                return
            origin = headers.get("origin")
            if origin is not None and origin.lower() not in self._own_origins(headers.get("host", "")):
                await _plain(send, 403, "refused: cross-origin request")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", [])
                        if not k.lower().startswith(b"access-control-")]
                message = {**message, "headers": kept + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _authorised(self, headers: dict[str, str]) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is simply not a valid token
            return False
        candidates = [cookie[self.cookie].value] if self.cookie in cookie else []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        return any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates)

    @staticmethod
    def _own_origins(host: str) -> set[str]:
        host = host.strip().lower()
        return {f"http://{host}", f"https://{host}"}


async def _plain(send: Send, status: int, text: str) -> None:
    await _respond(send, status, (text + "\n").encode(), [(b"content-type", b"text/plain; charset=utf-8")])


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
