"""A Docker-Hub-like (or ghcr-like) token service for the real upstream registry.

It implements the distribution token spec the way the two big registries behave:

- GET /token?service=S&scope=repository:NAME:pull[&scope=...]: anonymous, or with
  `Authorization: Basic user:password` (the stand-in for upstream credentials);
- POST /token (OAuth2 form: grant_type=password|refresh_token, scope space-separated),
  which containerd tries first when it has credentials (hub flavor only; the ghcr
  flavor answers 405 so clients must fall back to GET);
- anonymous callers get `pull` on public repositories, the credentialed user also on
  repositories under the private prefixes; nobody gets `push` from here (seeding mints
  its tokens directly);
- a scope it will not grant: the hub flavor still issues a token without that access
  (the registry then answers 401 insufficient_scope, as Docker Hub does for private or
  unknown repositories); the ghcr flavor answers 403 DENIED, as ghcr.io does;
- bad credentials: 401 (hub) / 403 DENIED (ghcr).

Every request is recorded (`requests`) with whether credentials were presented, so
tests can assert that a cache sent, or did not send, the upstream credentials.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .threadserver import ThreadedServer
from .tokensign import TOKEN_LIFETIME, Access, TokenSigner


@dataclass(frozen=True)
class TokenRequest:
    """What one request to the token endpoint asked for and got."""

    method: str
    service: str | None
    scopes: tuple[str, ...]
    basic_auth: bool           # an `Authorization: Basic` header was sent
    credentials: bool          # any credentials (Basic, password grant or refresh token)
    user: str | None           # the authenticated user, None for anonymous or rejected
    status: int
    granted: tuple[Access, ...] = ()


@dataclass
class TokenPolicy:
    flavor: str                                   # "hub" or "ghcr"
    username: str
    password: str
    private_prefixes: tuple[str, ...] = ("private/",)
    # Names the registry really has; None grants any public name. Hub and ghcr do not
    # hand out pull access for repositories that do not exist.
    repo_exists: Callable[[str], bool] | None = None

    def allowed_actions(self, name: str, user: str | None) -> set[str]:
        if self.repo_exists is not None and not self.repo_exists(name):
            return set()
        if name.startswith(self.private_prefixes) and user is None:
            return set()
        return {"pull"}


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`type:name:actions` -> parts. Names may carry a `host:port`, so split the
    type off the front and the actions off the back."""
    rtype, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    return rtype, name, [a for a in actions.split(",") if a]


@dataclass
class _Auth:
    user: str | None = None
    basic: bool = False
    credentials: bool = False
    rejected: bool = False


class TokenServer:
    """The token service on its own thread; `url + "/token"` is the realm."""

    def __init__(self, signer: TokenSigner, policy: TokenPolicy, port: int = 0) -> None:
        self.signer = signer
        self.policy = policy
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}
        self.failure_status: int | None = None   # when set, every request gets this status
        self._server = ThreadedServer(self._make_app, f"tokenserver-{policy.flavor}", port)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def realm(self) -> str:
        return f"{self._server.url}/token"

    # -- counters -------------------------------------------------------------------------
    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, entry: TokenRequest) -> None:
        with self._lock:
            self._requests.append(entry)

    # -- HTTP -----------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._handle)
        app.router.add_post("/token", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else {}
        if request.method == "POST":
            scopes = tuple(str(form.get("scope", "")).split())
            service = form.get("service")
        else:
            scopes = tuple(s for raw in request.query.getall("scope", []) for s in raw.split())
            service = request.query.get("service")
        auth = self._authenticate(request, form)

        def done(status: int, body: dict, granted: tuple[Access, ...] = ()) -> web.Response:
            self._record(TokenRequest(request.method, service, scopes, auth.basic,
                                      auth.credentials, auth.user, status, granted))
            return web.json_response(body, status=status)

        if self.failure_status is not None:
            return done(self.failure_status, {"details": "injected failure"})
        if request.method == "POST" and self.policy.flavor != "hub":
            return done(405, {"details": "method not allowed"})
        if service is not None and service != self.signer.service:
            return done(400, {"details": f"unknown service {service!r}"})
        if auth.rejected:
            if self.policy.flavor == "ghcr":
                return done(403, _denied())
            return done(401, {"details": "incorrect username or password"})

        granted, refused = self._grant(scopes, auth.user)
        if refused and self.policy.flavor == "ghcr":
            return done(403, _denied())
        token = self.signer.mint(auth.user or "", list(granted))
        issued_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        issued_at = issued_at.replace("+00:00", "Z")
        if self.policy.flavor == "ghcr":
            return done(200, {"token": token}, granted)   # ghcr sends no expires_in
        body = {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME,
                "issued_at": issued_at}
        if request.method == "POST":
            body = {"access_token": token, "token_type": "Bearer", "scope": " ".join(scopes),
                    "expires_in": TOKEN_LIFETIME, "issued_at": issued_at}
            if form.get("access_type") == "offline" and auth.user is not None:
                refresh = secrets.token_urlsafe(24)
                self._refresh_tokens[refresh] = auth.user
                body["refresh_token"] = refresh
        return done(200, body, granted)

    def _authenticate(self, request: web.Request, form) -> _Auth:
        auth = _Auth()
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            auth.basic = auth.credentials = True
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                auth.rejected = True
                return auth
            self._check_password(auth, user, password)
        elif form.get("grant_type") == "password":
            auth.credentials = True
            self._check_password(auth, str(form.get("username", "")), str(form.get("password", "")))
        elif form.get("grant_type") == "refresh_token":
            auth.credentials = True
            auth.user = self._refresh_tokens.get(str(form.get("refresh_token", "")))
            auth.rejected = auth.user is None
        return auth

    def _check_password(self, auth: _Auth, user: str, password: str) -> None:
        if user == self.policy.username and password == self.policy.password:
            auth.user = user
        else:
            auth.rejected = True

    def _grant(self, scopes: tuple[str, ...], user: str | None) -> tuple[tuple[Access, ...], bool]:
        """Access entries to put in the token, and whether any repository scope was refused."""
        granted: list[Access] = []
        refused = False
        for scope in scopes:
            parts = parse_scope(scope)
            if parts is None or not parts[0].startswith("repository"):
                continue   # e.g. registry:catalog:*, which neither Hub nor ghcr grants
            _, name, actions = parts
            ok = sorted(set(actions) & self.policy.allowed_actions(name, user))
            if ok:
                granted.append(Access(name=name, actions=tuple(ok)))
            else:
                refused = True
        return tuple(granted), refused


def _denied() -> dict:
    return {"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]}
