"""The servers under test and the limits, each started from a generated config on 127.0.0.1.

- `Upstream`: Debian's `docker-registry` (no auth, no redirects) holding the generated data,
  with nginx in front of its storage directory: blobs, manifests and the seeded tags are served
  as static files by nginx, everything else is passed to docker-registry. This keeps the
  upstream far faster than any cache in front of it, and nginx's access log is where upstream
  requests are counted.
- The same nginx also serves the seeded blob file as the hit-throughput limit, once with
  sendfile and once with 1 MiB read/write copies (on these VMs the copy is often faster).
- `Registry2Proxy`: the same `docker-registry` binary in proxy mode (`proxy.remoteurl`).
- `Regcache`: `python -m regcache serve --config FILE`, run from this checkout (PYTHONPATH).

Both caches can be restarted with an empty store for cold-miss repetitions.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from procs import Managed, Procs, free_port, wait_http

REPO_ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_LOG_FORMAT = "$request_method $uri $status $body_bytes_sent $request_time"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _registry_config(root: Path, port: int, remote: str | None) -> str:
    """A docker-registry config: filesystem storage, quiet logs, optional proxy mode.

    blobdescriptor: inmemory is what the official registry:2 image ships with.
    """
    proxy = f"proxy:\n  remoteurl: {remote}\n" if remote else ""
    return f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: false
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: regcache-bench
{proxy}"""


class Cache:
    """A cache under test: start/stop/restart-empty, and its memory peak over all incarnations."""

    name = "cache"

    def __init__(self, procs: Procs, workdir: Path, upstream_url: str) -> None:
        self.procs = procs
        self.dir = workdir / self.name.replace(":", "")
        self.upstream_url = upstream_url
        self.port = free_port()
        self.proc: Managed | None = None
        self.incarnations: list[Managed] = []

    @property
    def root(self) -> Path:
        return self.dir / "store"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        """Start the cache on its port (the same port across restarts) and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = self.procs.start(self.name, self.argv(), self.dir / "server.log", env=self.env())
        self.incarnations.append(self.proc)
        wait_http(self.port, "/v2/", proc=self.proc.proc, log=self.proc.log_path)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None

    def restart_empty(self) -> None:
        """Stop, remove the whole store, start again: the next blob request is a cold miss."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        self.start()

    def blob_file(self, digest_hex: str) -> Path:
        raise NotImplementedError

    def peak_rss_mib(self) -> float:
        """Highest memory use of any incarnation: sampled process-tree RSS or VmHWM."""
        kib = max((max(m.peak_tree_rss_kib, m.peak_hwm_kib) for m in self.incarnations), default=0)
        return kib / 1024


class Registry2Proxy(Cache):
    """Debian's docker-registry (the code of registry:2) in proxy mode."""

    name = "registry:2"

    def argv(self) -> list[str]:
        cfg = _write(self.dir / "config.yml",
                     _registry_config(self.root, self.port, self.upstream_url))
        return ["docker-registry", "serve", str(cfg)]

    def blob_file(self, digest_hex: str) -> Path:
        return self.root / "docker/registry/v2/blobs/sha256" / digest_hex[:2] / digest_hex / "data"


class Regcache(Cache):
    """regcache from this checkout: `python -m regcache serve --config FILE`."""

    name = "regcache"

    def argv(self) -> list[str]:
        cfg = _write(self.dir / "config.yaml", f"""storage:
  root: {self.root}
upstreams:
  - name: docker.io
    url: {self.upstream_url}
listeners:
  - address: 127.0.0.1
    port: {self.port}
    default_upstream: docker.io
log:
  level: warning
  access_log: false
""")
        return [sys.executable, "-m", "regcache", "serve", "--config", str(cfg)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def blob_file(self, digest_hex: str) -> Path:
        return self.root / "v1/blobs/sha256" / digest_hex[:2] / digest_hex


def regcache_available() -> str | None:
    """None when `python -m regcache serve` exists in this checkout, else why not."""
    cli = REPO_ROOT / "regcache" / "cli.py"
    if not cli.exists():
        return "regcache/cli.py does not exist yet"
    if "serve" not in cli.read_text():
        return "regcache/cli.py has no `serve` command yet"
    return None


class Upstream:
    """docker-registry holding the data, and one nginx: upstream front + the two blob limits."""

    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.dir = workdir / "upstream"
        self.root = self.dir / "store"
        self.registry_port = free_port()
        self.port = free_port()             # nginx front: what the caches use as upstream
        self.sendfile_port = free_port()    # nginx limit, sendfile on
        self.copy_port = free_port()        # nginx limit, 1 MiB read/write
        self.access_log = self.dir / "nginx" / "logs" / "upstream.log"
        self.registry: Managed | None = None
        self.nginx: Managed | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blob_file(self, digest_hex: str) -> Path:
        return self.root / "docker/registry/v2/blobs/sha256" / digest_hex[:2] / digest_hex / "data"

    def start_registry(self) -> None:
        """docker-registry alone, for seeding through the push API."""
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = _write(self.dir / "config.yml", _registry_config(self.root, self.registry_port, None))
        self.registry = self.procs.start("upstream-registry", ["docker-registry", "serve", str(cfg)],
                                         self.dir / "registry.log")
        wait_http(self.registry_port, "/v2/", proc=self.registry.proc,
                  log=self.registry.log_path)

    def start_nginx(self, tags: dict[str, tuple[str, str]], manifest_type: str,
                    blob_hex: str) -> None:
        """nginx front + limits. tags maps "/v2/<repo>/manifests/<tag>" to (digest hex, media type)."""
        ndir = self.dir / "nginx"
        for sub in ("logs", "tmp"):
            (ndir / sub).mkdir(parents=True, exist_ok=True)
        conf = _write(ndir / "nginx.conf", self._nginx_conf(tags, manifest_type, blob_hex))
        self.nginx = self.procs.start(
            "nginx", ["nginx", "-p", str(ndir), "-e", str(ndir / "logs/error.log"), "-c", str(conf)],
            ndir / "nginx.out")
        for port in (self.port, self.sendfile_port, self.copy_port):
            wait_http(port, "/v2/" if port == self.port else "/blob", proc=self.nginx.proc,
                      log=ndir / "logs/error.log")

    def access_lines(self) -> int:
        """Lines in the upstream access log so far (written unbuffered, one per request)."""
        try:
            with open(self.access_log, "rb") as f:
                return sum(1 for _ in f)
        except FileNotFoundError:
            return 0

    def access_since(self, start_line: int) -> list[list[str]]:
        """Access log entries after line start_line, split into fields (method uri status ...)."""
        with open(self.access_log, "rb") as f:
            lines = f.read().decode().splitlines()
        return [ln.split() for ln in lines[start_line:]]

    def _nginx_conf(self, tags: dict[str, tuple[str, str]], manifest_type: str,
                    blob_hex: str) -> str:
        blobs = self.root / "docker/registry/v2/blobs/sha256"
        user = "user root;\n" if os.geteuid() == 0 else ""
        tag_locations = "".join(
            f"""
    location = {path} {{
        alias {blobs}/{hexd[:2]}/{hexd}/data;
        types {{ }} default_type {mtype};
        add_header Docker-Content-Digest sha256:{hexd} always;
        add_header Docker-Distribution-API-Version registry/2.0 always;
    }}""" for path, (hexd, mtype) in tags.items())
        blob_file = self.blob_file(blob_hex)
        return f"""{user}worker_processes auto;
pid nginx.pid;
daemon off;
events {{ worker_connections 4096; }}
http {{
    log_format up '{UPSTREAM_LOG_FORMAT}';
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server_tokens off;

    # The upstream registry. Static answers for the hot paths, docker-registry for the rest.
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        access_log logs/upstream.log up;
        sendfile off;
        output_buffers 2 1m;
        location = /v2/ {{
            default_type application/json;
            add_header Docker-Distribution-API-Version registry/2.0 always;
            return 200 '{{}}';
        }}
        location ~ "^/v2/.+/blobs/sha256:(([0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
            alias {blobs}/$2/$1/data;
            types {{ }} default_type application/octet-stream;
            add_header Docker-Content-Digest sha256:$1 always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
        }}
        location ~ "^/v2/.+/manifests/sha256:(([0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
            alias {blobs}/$2/$1/data;
            types {{ }} default_type {manifest_type};
            add_header Docker-Content-Digest sha256:$1 always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
        }}{tag_locations}
        location / {{
            proxy_pass http://127.0.0.1:{self.registry_port};
            proxy_buffering off;
        }}
    }}

    # Limit: the same blob file, sendfile.
    server {{
        listen 127.0.0.1:{self.sendfile_port} backlog=4096;
        sendfile on;
        tcp_nopush on;
        location = /blob {{
            alias {blob_file};
            types {{ }} default_type application/octet-stream;
        }}
    }}

    # Limit: the same blob file, copied with 1 MiB reads and writes.
    server {{
        listen 127.0.0.1:{self.copy_port} backlog=4096;
        sendfile off;
        output_buffers 2 1m;
        location = /blob {{
            alias {blob_file};
            types {{ }} default_type application/octet-stream;
        }}
    }}
}}
"""
