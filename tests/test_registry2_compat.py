"""registry:2 (distribution) proxy configs: a config file and the same settings as REGISTRY_*
variables each start regcache with the equivalent configuration.

Loading is checked through `load_settings` (what `regcache serve` calls); serving is checked by
starting the real CLI with each form and pulling through it from the real upstream registry
(distribution with Hub-like token auth) with skopeo.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regcache.config import ConfigError, load_settings
from tests.support.client_skopeo import Skopeo
from tests.support.net import LOOPBACK, free_port, wait_http

# The registry:2 image's own /etc/docker/registry/config.yml, turned into a proxy.
IMAGE_DEFAULT = {
    "version": 0.1,
    "log": {"fields": {"service": "registry"}},
    "storage": {"cache": {"blobdescriptor": "inmemory"}, "filesystem": {"rootdirectory": "/var/lib/registry"}},
    "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
}


def write(tmp_path: Path, data: dict, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def full_config(root: str, port: int, remote: str) -> dict:
    return {
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": root}},
        "http": {"addr": f"{LOOPBACK}:{port}",
                 "debug": {"addr": f"{LOOPBACK}:{port + 1}", "prometheus": {"enabled": True, "path": "/metrics"}}},
        "proxy": {"remoteurl": remote, "username": "robot", "password": "123456", "ttl": "336h"},
        "log": {"level": "warn", "formatter": "json", "accesslog": {"disabled": True}},
    }


def same_as_env(root: str, port: int, remote: str) -> dict[str, str]:
    return {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": root,
        "REGISTRY_HTTP_ADDR": f"{LOOPBACK}:{port}",
        "REGISTRY_HTTP_DEBUG_ADDR": f"{LOOPBACK}:{port + 1}",
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
        "REGISTRY_PROXY_REMOTEURL": remote,
        "REGISTRY_PROXY_USERNAME": "robot",
        "REGISTRY_PROXY_PASSWORD": "123456",
        "REGISTRY_PROXY_TTL": "336h",
        "REGISTRY_LOG_LEVEL": "warn",
        "REGISTRY_LOG_FORMATTER": "json",
        "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
    }


def comparable(settings) -> dict:
    out = dataclasses.asdict(settings)
    out.pop("warnings")
    return out


# --- loading -----------------------------------------------------------------------------------

def test_file_and_env_give_the_same_settings(tmp_path):
    from_file = load_settings(write(tmp_path, full_config("/srv/cache", 5100, "https://registry-1.docker.io")), {})
    from_env = load_settings(None, same_as_env("/srv/cache", 5100, "https://registry-1.docker.io"))
    assert comparable(from_file) == comparable(from_env)
    assert from_file.warnings == from_env.warnings == ()
    (upstream,) = from_file.upstreams
    assert (upstream.name, upstream.url) == ("docker.io", "https://registry-1.docker.io")
    assert "index.docker.io" in upstream.aliases and upstream.library_prefix
    assert (upstream.username, upstream.password) == ("robot", "123456")  # not YAML-parsed into 123456
    assert str(from_file.storage_root) == "/srv/cache"
    (listener,) = from_file.listeners
    assert (listener.address, listener.port, listener.default_upstream) == (LOOPBACK, 5100, "docker.io")
    assert from_file.cache.ttl == 336 * 3600
    assert (from_file.log.level, from_file.log.format, from_file.log.access_log) == ("warning", "json", False)
    assert (from_file.metrics.port, from_file.metrics.address) == (5101, LOOPBACK)


def test_image_default_config_plus_remoteurl(tmp_path):
    """The registry:2 image's built-in file with REGISTRY_PROXY_REMOTEURL, as most deployments run it."""
    settings = load_settings(write(tmp_path, IMAGE_DEFAULT), {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io"})
    assert [(u.name, u.url, u.username) for u in settings.upstreams] == [("ghcr.io", "https://ghcr.io", None)]
    assert not settings.upstreams[0].library_prefix
    assert (settings.listeners[0].address, settings.listeners[0].port) == ("0.0.0.0", 5000)
    assert str(settings.storage_root) == "/var/lib/registry"
    assert settings.cache.ttl == 168 * 3600  # distribution's proxy default
    assert (settings.log.format, settings.log.access_log) == ("plain", True)
    joined = "\n".join(settings.warnings)
    for key in ("health", "log.fields", "storage.cache", "http.headers"):
        assert f"registry:2 config: {key}: ignored" in joined
    assert len(settings.warnings) == 4


def test_env_alone_uses_distribution_defaults():
    settings = load_settings(None, {"REGISTRY_PROXY_REMOTEURL": "https://registry-1.docker.io"})
    assert str(settings.storage_root) == "/var/lib/registry"
    assert settings.listeners[0].port == 5000 and settings.cache.ttl == 168 * 3600
    assert settings.upstreams[0].name == "docker.io" and settings.upstreams[0].username is None


def test_env_overrides_the_file(tmp_path):
    path = write(tmp_path, full_config("/srv/cache", 5100, "https://registry-1.docker.io"))
    settings = load_settings(path, {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io",
                                    "REGISTRY_PROXY_PASSWORD": "from-env", "REGISTRY_HTTP_ADDR": ":6000"})
    assert settings.upstreams[0].name == "ghcr.io"
    assert settings.upstreams[0].password == "from-env"
    assert settings.listeners[0].port == 6000 and settings.listeners[0].address == "0.0.0.0"
    assert str(settings.storage_root) == "/srv/cache"


def test_regcache_overrides_still_apply(tmp_path):
    settings = load_settings(write(tmp_path, IMAGE_DEFAULT | {"proxy": {"remoteurl": "https://ghcr.io"}}),
                             {"REGCACHE_CACHE_TTL": "24h", "REGCACHE_STORAGE_ROOT": "/data"})
    assert settings.cache.ttl == 24 * 3600 and str(settings.storage_root) == "/data"


@pytest.mark.parametrize("ttl", ["0", "0s", "0h0m0s", "-1h"])
def test_never_expiring_ttl_becomes_ten_years_with_a_warning(tmp_path, ttl):
    settings = load_settings(None, {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io", "REGISTRY_PROXY_TTL": ttl})
    assert settings.cache.ttl == 87600 * 3600
    assert any("proxy.ttl" in w and "never expire" in w for w in settings.warnings)


def test_ignored_keys_warn(tmp_path):
    config = IMAGE_DEFAULT | {
        "proxy": {"remoteurl": "https://ghcr.io", "exec": {"command": "x"}},
        "notifications": {"endpoints": []},
        "redis": {"addr": "redis:6379"},
        "storage": {"filesystem": {"rootdirectory": "/d", "maxthreads": 100}, "delete": {"enabled": True}},
    }
    env = {"REGISTRY_HTTP_SECRET": "xyz", "REGISTRY_VALIDATION_DISABLED": "true",
           # Set by Kubernetes for a Service named `registry`: not config, so no warning either.
           "REGISTRY_PORT": "tcp://10.0.0.1:5000", "REGISTRY_SERVICE_HOST": "10.0.0.1",
           "REGISTRY_PORT_5000_TCP_ADDR": "10.0.0.1"}
    warnings = load_settings(write(tmp_path, config), env).warnings
    joined = "\n".join(warnings)
    for key in ("proxy.exec", "notifications", "redis", "storage.filesystem.maxthreads", "storage.delete",
                "http.secret", "validation"):
        assert f"registry:2 config: {key}: ignored" in joined
    # REGISTRY_PORT... would read as the keys `port` and `service`.
    assert not [w for w in warnings if w.startswith(("registry:2 config: port", "registry:2 config: service"))]
    assert "10.0.0.1" not in joined


@pytest.mark.parametrize("change, message", [
    ({"storage": {"s3": {"bucket": "b"}}}, "storage.s3: regcache stores on a local filesystem only"),
    ({"http": {"addr": ":5000", "tls": {"certificate": "/c.pem", "key": "/k.pem"}}}, "http.tls"),
    ({"http": {"addr": ":5000", "prefix": "/mirror/"}}, "http.prefix"),
    ({"http": {"addr": "/run/registry.sock", "net": "unix"}}, "http.net"),
    ({"http": {"addr": "5000"}}, "http.addr"),
    ({"auth": {"htpasswd": {"realm": "r", "path": "/auth/htpasswd"}}}, "auth: regcache does not authenticate"),
    ({"proxy": {"username": "u"}}, "proxy.remoteurl: required"),
    ({"proxy": {"remoteurl": "ftp://x"}}, "proxy.remoteurl: must be an http(s) URL"),
    ({"log": {"level": "loud"}}, "log.level"),
])
def test_changes_clients_would_notice_are_errors(tmp_path, change, message):
    config = {"version": 0.1, "proxy": {"remoteurl": "https://ghcr.io"}} | change
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(write(tmp_path, config), {})


def test_non_filesystem_storage_from_env_is_an_error():
    with pytest.raises(ConfigError, match="REGISTRY_STORAGE=s3"):
        load_settings(None, {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io", "REGISTRY_STORAGE": "s3"})


def test_registry_env_next_to_a_regcache_config_warns(tmp_path):
    native = {"upstreams": [{"name": "ghcr.io", "url": "https://ghcr.io"}],
              "listeners": [{"port": 5000, "default_upstream": "ghcr.io"}]}
    settings = load_settings(write(tmp_path, native), {"REGISTRY_PROXY_REMOTEURL": "https://quay.io"})
    assert settings.upstreams[0].name == "ghcr.io"
    assert settings.warnings == ("REGISTRY_PROXY_REMOTEURL: ignored (the config is in regcache's format)",)


def test_password_without_username_is_refused():
    with pytest.raises(ConfigError, match="go together"):
        load_settings(None, {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io", "REGISTRY_PROXY_PASSWORD": "p"})


# --- serving -------------------------------------------------------------------------------------

def serve(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "REGCACHE_"))}
    base.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "regcache", *argv], env=base | env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(port, "/v2/", proc=proc)
    except Exception:
        proc.kill()
        proc.wait()
        raise AssertionError(log.read_text())
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.real_upstream
@pytest.mark.parametrize("form", ["file", "env"])
async def test_serves_a_pull_from_either_form(tmp_path, hub_upstream, form):
    port = free_port()
    root = tmp_path / "store"
    config = full_config(str(root), port, hub_upstream.url)
    config["proxy"].update(username=hub_upstream.username, password=hub_upstream.password)
    config["http"].pop("debug")  # a second port only adds a race for a free one here
    if form == "file":
        proc = serve(["serve", "--config", str(write(tmp_path, config))], {}, port, tmp_path / "log")
    else:
        env = same_as_env(str(root), port, hub_upstream.url)
        env.update(REGISTRY_PROXY_USERNAME=hub_upstream.username, REGISTRY_PROXY_PASSWORD=hub_upstream.password)
        del env["REGISTRY_HTTP_DEBUG_ADDR"], env["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"]
        proc = serve(["serve"], env, port, tmp_path / "log")
    try:
        skopeo = Skopeo(tmp_path / "skopeo", mirror=f"{LOOPBACK}:{port}")
        for ref in ("library/hello:latest", "private/app:1"):  # private: only with the proxy credentials
            image = hub_upstream.image(ref)
            result = await skopeo.copy_to_dir(skopeo.direct_ref(ref), tmp_path / ref.replace("/", "_"))
            assert result.digest == image.digest
        # The upstream saw regcache log in as the configured user, and the store is where the config says.
        assert any(t.user == hub_upstream.username and t.basic_auth for t in hub_upstream.token_requests())
        assert (root / "v1" / "blobs" / "sha256").is_dir()
    finally:
        stop(proc)
