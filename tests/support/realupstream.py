"""The real upstream: Debian's docker-registry with Hub-style token auth, a blob CDN,
request counting and seeded images. See tests/support/__init__.py for the API tour.

One RealUpstream is three servers on 127.0.0.1:
  registry   docker-registry (distribution 2.8) subprocess: `url`, `port`
  token      the token service (thread): `realm`, `service`       [auth=True]
  cdn        the redirect target (thread): `cdn.url`               [redirect=True]

What distribution 2.8 does that a cache must cope with (seen against this fixture):
- Blob GET *and HEAD* answer 307 to the CDN; the 307 to a HEAD carries no
  Content-Length or Docker-Content-Digest. The Location has no signature or expiry.
- A manifest GET by tag without an Accept naming the manifest-list type gets the
  linux/amd64 image converted on the fly to a signed schema1 manifest (a different
  digest); an OCI index or OCI manifest without its type in Accept is a 404
  MANIFEST_UNKNOWN ("OCI index found, but accept header does not support OCI indexes").
  So always send the full Accept list upstream.
- Unknown or private repositories: 401 insufficient_scope (hub flavor, like Docker Hub),
  or 403 DENIED from the token endpoint (ghcr flavor, like ghcr.io); never a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

from .cdn import CdnServer
from .images import Image, Index, build_image, busybox_layer, etc_layer
from .net import LOOPBACK
from .pushclient import Pusher
from .registryproc import AccessEntry, RegistryProcess
from .seed import DEFAULT_BIG_LAYER_SIZE, catalog
from .tokenserver import TokenPolicy, TokenRequest, TokenServer
from .tokensign import Access, TokenSigner

FLAVORS = {
    # flavor: (service, issuer) -- the service names are the real ones, so a cache that
    # special-cases them sees what it would see in production.
    "hub": ("registry.docker.io", "regcache-test-auth.docker.io"),
    "ghcr": ("ghcr.io", "regcache-test-ghcr.io"),
}

USERNAME = "regcache-user"
PASSWORD = "upstream-pat-0123456789"


class RealUpstream:
    """A running upstream registry. Build with `start_upstream(...)` (a context manager)."""

    def __init__(self, workdir: Path, *, flavor: str = "hub", auth: bool = True,
                 redirect: bool = True, big_layer_size: int = DEFAULT_BIG_LAYER_SIZE) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {sorted(FLAVORS)}")
        self.workdir = workdir
        self.flavor = flavor
        self.auth = auth
        self.redirect = redirect
        self.big_layer_size = big_layer_size
        self.service, self.issuer = FLAVORS[flavor]
        self.username, self.password = USERNAME, PASSWORD
        # The password in a file, for configs that take `password_file`.
        self.password_file = workdir / "upstream-password"
        self.storage_root = workdir / "storage"
        self.images: dict[str, Image | Index] = {}   # "repo:tag" -> what the tag points at now
        self._repos: set[str] = set()
        self._generation = itertools.count(1)
        self.signer: TokenSigner | None = None
        self.token_server: TokenServer | None = None
        self.cdn: CdnServer | None = None
        self.registry: RegistryProcess | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def launch(self, seed: bool = True) -> RealUpstream:
        """Start the three servers and push the catalog (called by start_upstream)."""
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password)
        auth_config = None
        if self.auth:
            self.signer = TokenSigner(self.issuer, self.service)
            policy = TokenPolicy(flavor=self.flavor, username=self.username,
                                 password=self.password, repo_exists=self._repos.__contains__)
            self.token_server = TokenServer(self.signer, policy)
            self.token_server.start()
            auth_config = {
                "realm": self.token_server.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.signer.write_cert_bundle(self.workdir / "token-ca.pem")),
            }
        redirect_base = None
        if self.redirect:
            self.cdn = CdnServer(self.storage_root)
            self.cdn.start()
            redirect_base = self.cdn.url + "/"
        self.registry = RegistryProcess(self.workdir, auth=auth_config,
                                        redirect_base=redirect_base,
                                        storage_root=self.storage_root)
        self.registry.start()
        if seed:
            for ref, image in catalog(self.flavor, self.big_layer_size).items():
                self.push(ref, image)
        self.reset_counts()
        return self

    def close(self) -> None:
        """Stop everything this upstream started (by pid / by thread)."""
        for part in (self.registry, self.cdn, self.token_server):
            if part is not None:
                part.stop()

    def stop(self) -> None:
        """Take the registry down (the token server and CDN stay up): `upstream down`.
        Connections are then refused on its port. `cdn.stop()` takes the CDN down."""
        self.registry.stop()

    def start(self) -> None:
        """Bring the registry back on the same port with the same content."""
        self.registry.start()

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """`with upstream.down(): ...` -- the registry is stopped inside the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def ensure_running(self) -> None:
        """Undo what a test may have done: registry, CDN and token server up, no
        injected token-server failure."""
        if self.token_server is not None:
            self.token_server.failure_status = None
        self.registry.start()
        for part in (self.cdn, self.token_server):
            if part is not None:
                part.start()

    # -- addresses ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self.registry.port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, as used in image references."""
        return f"{LOOPBACK}:{self.registry.port}"

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def realm(self) -> str | None:
        return self.token_server.realm if self.token_server else None

    @property
    def pid(self) -> int | None:
        return self.registry.pid

    @property
    def log_path(self) -> Path:
        """The registry's own log (stderr, JSON lines): read it when a test fails."""
        return self.registry.stderr_path

    def config_entry(self, name: str | None = None, *, credentials: bool = False) -> dict:
        """An `upstreams:` entry for a regcache config pointing here."""
        entry = {"name": name or ("ghcr.io" if self.flavor == "ghcr" else "docker.io"),
                 "url": self.url}
        if credentials:
            entry.update(username=self.username, password_file=str(self.password_file))
        return entry

    # -- images ---------------------------------------------------------------------------
    def image(self, ref: str) -> Image | Index:
        """The image a seeded or pushed `repo:tag` points at now."""
        return self.images[ref]

    def push(self, ref: str, image: Image | Index) -> str:
        """Push `image` under `repo:tag` (blocking); returns its digest."""
        repo, _, tag = ref.rpartition(":")
        digest = Pusher(self.registry.port, self._push_token).push(repo, tag, image)
        self._repos.add(repo)
        self.images[ref] = image
        return digest

    def retag(self, ref: str, image: Image | Index | None = None) -> Image | Index:
        """Point `repo:tag` at a different manifest: `image`, or a freshly generated
        single-arch image unlike any pushed before. Returns what the tag now points at.
        Use your own repository names: the seeded tags are shared by all tests."""
        if image is None:
            image = build_image([busybox_layer(),
                                 etc_layer(f"{ref} generation {next(self._generation)}")],
                                oci=self.flavor == "ghcr")
        self.push(ref, image)
        return image

    def delete(self, ref: str) -> None:
        """Delete the manifest `repo:tag` points at; the tag (and any other tag on the
        same manifest) then answers 404 MANIFEST_UNKNOWN. Blobs stay."""
        repo, _, _ = ref.rpartition(":")
        image = self.images.pop(ref)
        Pusher(self.registry.port, self._push_token).delete_manifest(repo, image.digest)
        for other, img in list(self.images.items()):
            if other.startswith(repo + ":") and img.digest == image.digest:
                del self.images[other]

    async def apush(self, ref: str, image: Image | Index) -> str:
        return await asyncio.to_thread(self.push, ref, image)

    async def aretag(self, ref: str, image: Image | Index | None = None) -> Image | Index:
        return await asyncio.to_thread(self.retag, ref, image)

    def _push_token(self, repo: str) -> str | None:
        if self.signer is None:
            return None
        return self.signer.mint("seeder", [Access(name=repo, actions=("pull", "push", "delete"))])

    def token(self, repo: str, actions: tuple[str, ...] = ("pull",)) -> str | None:
        """A valid bearer token minted directly (no token-server request is counted)."""
        if self.signer is None:
            return None
        return self.signer.mint("test", [Access(name=repo, actions=actions)])

    # -- counting -------------------------------------------------------------------------
    def reset_counts(self) -> None:
        """Count registry, token and CDN requests from now on."""
        self.registry.access_log.reset()
        for part in (self.cdn, self.token_server):
            if part is not None:
                part.reset()

    def requests(self) -> list[AccessEntry]:
        """Registry requests since the last reset, from its access log: method, target
        (path?query), path, status. Blocks up to a few tens of ms for the log to settle."""
        return self.registry.access_log.entries()

    def count(self, method: str | None = None, path_contains: str = "",
              status: int | None = None) -> int:
        """Registry requests since the last reset matching all given filters.
        e.g. count("GET", "/blobs/"), count("HEAD", "/manifests/latest")."""
        return sum(1 for e in self.requests()
                   if (method is None or e.method == method) and path_contains in e.path
                   and (status is None or e.status == status))

    def token_requests(self) -> list[TokenRequest]:
        return self.token_server.requests if self.token_server else []

    def cdn_requests(self) -> list:
        return self.cdn.requests if self.cdn else []

    def blob_fetches(self, digest: str) -> int:
        """How many times the bytes of blob `digest` were served: registry GETs that
        answered 200/206 plus CDN GETs of it (a 307 alone delivers no bytes)."""
        hexpart = digest.split(":", 1)[1]
        direct = sum(1 for e in self.requests() if e.method == "GET"
                     and e.path.endswith(f"/blobs/{digest}") and e.status in (200, 206))
        via_cdn = sum(1 for r in self.cdn_requests() if r.method == "GET"
                      and f"/{hexpart}/data" in r.path and r.status in (200, 206))
        return direct + via_cdn

    def __repr__(self) -> str:
        return (f"RealUpstream(flavor={self.flavor!r}, url={self.url!r}, auth={self.auth}, "
                f"redirect={self.redirect})")


@contextlib.contextmanager
def start_upstream(workdir: Path, **options) -> Iterator[RealUpstream]:
    """Start (and seed) an upstream in `workdir`; stop everything on exit.
    Options: flavor="hub"|"ghcr", auth=True, redirect=True, big_layer_size, seed=True."""
    seed = options.pop("seed", True)
    workdir.mkdir(parents=True, exist_ok=True)
    upstream = RealUpstream(workdir, **options)
    try:
        upstream.launch(seed=seed)
        yield upstream
    finally:
        upstream.close()
