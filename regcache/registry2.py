"""Read a `registry:2` (distribution) proxy-mode configuration, so a deployment can swap its image first.

regcache understands the part of distribution's config that a pull-through cache uses:

    version: 0.1
    storage: {filesystem: {rootdirectory: /var/lib/registry}}
    http: {addr: ":5000", debug: {addr: ":5001", prometheus: {enabled: true}}}
    proxy: {remoteurl: https://registry-1.docker.io, username: u, password: p, ttl: 168h}
    log: {level: info, formatter: text, accesslog: {disabled: false}}

and the matching `REGISTRY_*` variables (`REGISTRY_PROXY_REMOTEURL`, `REGISTRY_HTTP_ADDR`, ...),
which override the file as they do in distribution. The result is a raw regcache config mapping
for `config.build_settings`; keys that don't matter to a cache become warnings (`_warnings`),
and keys whose loss would change what clients see (TLS, client auth, a URL prefix, non-local
storage, no remote URL) are errors.

The password never enters the mapping: the upstream reads it from `REGISTRY_PROXY_PASSWORD`
(`password_env`), which is filled from `proxy.password` when the variable is not set.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from regcache.config import DOCKER_HUB, ConfigError

PASSWORD_ENV = "REGISTRY_PROXY_PASSWORD"

# distribution's defaults: the registry:2 image's /etc/docker/registry/config.yml, and the
# proxy's fixed 7-day repository TTL (proxy.ttl's default in distribution 3).
DEFAULT_ROOT = "/var/lib/registry"
DEFAULT_ADDR = ":5000"
DEFAULT_TTL = "168h"
# proxy.ttl <= 0 means "never expire" in distribution; regcache needs a positive TTL.
NEVER_TTL = "87600h"

_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# Variables Kubernetes sets for a Service named `registry` in the same namespace: not config.
_SERVICE_LINK_ENV = re.compile(r"REGISTRY_(SERVICE_(HOST|PORT)(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)")
# Kept verbatim: YAML would turn a password `123456` into a number or `yes` into true.
_VERBATIM_ENV = {"REGISTRY_PROXY_REMOTEURL", "REGISTRY_PROXY_USERNAME", PASSWORD_ENV}
# storage.<key> entries that configure distribution itself rather than choosing a driver.
_STORAGE_OPTIONS = {"delete", "cache", "maintenance", "redirect", "tag"}
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
               "error": "error", "fatal": "error", "panic": "error"}


def looks_like_registry2(data: Mapping[str, Any]) -> bool:
    """A distribution config file: `version` plus one of its sections (regcache has no `version`)."""
    return "version" in data and any(key in data for key in ("proxy", "storage", "http"))


def env_selects_registry2(environ: Mapping[str, str]) -> bool:
    """Without a config file, REGISTRY_PROXY_REMOTEURL alone makes a registry:2 proxy."""
    return bool(environ.get("REGISTRY_PROXY_REMOTEURL"))


def stray_env(environ: Mapping[str, str]) -> list[str]:
    """REGISTRY_PROXY_* variables next to a regcache-format file: they would be ignored."""
    return sorted(name for name in environ if name.startswith("REGISTRY_PROXY_"))


def convert(data: Mapping[str, Any] | None,
            environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(raw regcache mapping with `_warnings`, environ for build_settings) from a registry:2 config."""
    warnings: list[str] = []
    config = _merge_env(copy.deepcopy(dict(data or {})), environ, warnings)
    environ = dict(environ)
    if config.get("auth"):
        # Dropping it would open a cache that asked for passwords to everyone.
        raise ConfigError("auth: regcache does not authenticate clients; restrict access with a "
                          "NetworkPolicy instead, then remove auth")

    root = _storage_root(config.get("storage") or {}, warnings)
    listener = _listener(config.get("http") or {}, warnings)
    upstream, ttl = _proxy(config.get("proxy"), environ, warnings)
    listener["default_upstream"] = upstream["name"]
    raw: dict[str, Any] = {
        "storage": {"root": root},
        "cache": {"ttl": ttl},
        "upstreams": [upstream],
        "listeners": [listener],
        "log": _log(config.get("log") or {}, warnings),
        "metrics": _metrics((config.get("http") or {}).get("debug") or {}, warnings),
    }
    for key in sorted(set(config) - {"version", "storage", "http", "proxy", "log"}):
        warnings.append(_ignored(key, _IGNORED_WHY.get(key, "not used by regcache")))
    raw["_warnings"] = [f"registry:2 config: {w}" for w in warnings]
    return raw, environ


_IGNORED_WHY = {
    "health": "regcache serves /healthz and /readyz",
    "notifications": "regcache sends no webhooks",
    "redis": "regcache keeps its metadata on disk",
    "reporting": "not used by regcache",
    "middleware": "regcache serves blobs itself",
    "validation": "proxies never accept pushes",
    "compatibility": "not used by regcache",
    "catalog": "not used by regcache",
    "loglevel": "use log.level",
}


def _ignored(key: str, why: str) -> str:
    return f"{key}: ignored ({why})"


def _merge_env(config: dict[str, Any], environ: Mapping[str, str], warnings: list[str]) -> dict[str, Any]:
    """Apply REGISTRY_<PATH> variables over the file, as distribution does (values are YAML)."""
    for name in sorted(environ):
        if not name.startswith("REGISTRY_") or name == PASSWORD_ENV or _SERVICE_LINK_ENV.fullmatch(name):
            continue
        value = environ[name]
        if name == "REGISTRY_STORAGE":  # selects the storage driver by name
            if value != "filesystem":
                raise ConfigError(f"{name}={value}: regcache stores on a local filesystem only")
            continue
        parsed = value if name in _VERBATIM_ENV else yaml.safe_load(value) if value else value
        *parents, leaf = name[len("REGISTRY_"):].lower().split("_")
        node = config
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = parsed
    return config


def _storage_root(storage: Mapping[str, Any], warnings: list[str]) -> str:
    if not isinstance(storage, Mapping):
        raise ConfigError("storage: must be a mapping")
    drivers = sorted(set(storage) - _STORAGE_OPTIONS)
    if drivers not in ([], ["filesystem"]):
        other = next(d for d in drivers if d != "filesystem")
        raise ConfigError(f"storage.{other}: regcache stores on a local filesystem only "
                          "(storage.filesystem.rootdirectory)")
    for key in sorted(set(storage) & _STORAGE_OPTIONS):
        warnings.append(_ignored(f"storage.{key}", "regcache manages its own store and eviction"))
    filesystem = storage.get("filesystem") or {}
    for key in sorted(set(filesystem) - {"rootdirectory"}):
        warnings.append(_ignored(f"storage.filesystem.{key}", "not used by regcache"))
    return str(filesystem.get("rootdirectory") or DEFAULT_ROOT)


def _split_addr(addr: Any, key: str) -> tuple[str, int]:
    """Go's host:port (":5000", "0.0.0.0:5000", "[::]:5000") as (address, port)."""
    match = re.fullmatch(r"(\[[^\]]*\]|[^:]*):(\d{1,5})", str(addr))
    if not match:
        raise ConfigError(f"{key}: expected host:port such as :5000, got {addr!r}")
    return (match.group(1).strip("[]") or "0.0.0.0"), int(match.group(2))


def _listener(http: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    if str(http.get("net") or "tcp") != "tcp":
        raise ConfigError(f"http.net: regcache listens on TCP only, got {http.get('net')!r}")
    if http.get("prefix") not in (None, "", "/"):
        raise ConfigError("http.prefix: regcache serves the API at /v2/ only; clients would need new URLs")
    tls = http.get("tls") or {}
    if any(tls.get(k) for k in ("certificate", "key", "letsencrypt")):
        raise ConfigError("http.tls: regcache serves plain HTTP; terminate TLS in front of it "
                          "(Ingress, load balancer) or let clients use http://")
    address, port = _split_addr(http.get("addr") or DEFAULT_ADDR, "http.addr")
    why = {"headers": "regcache sets its own response headers", "secret": "regcache has no upload state",
           "debug": "only http.debug.addr with prometheus is used, as metrics.port"}
    for key in sorted(set(http) - {"addr", "net", "prefix", "tls", "debug"}):
        warnings.append(_ignored(f"http.{key}", why.get(key, "not used by regcache")))
    return {"address": address, "port": port}


def _proxy(proxy: Any, environ: dict[str, str],
           warnings: list[str]) -> tuple[dict[str, Any], str]:
    if not isinstance(proxy, Mapping) or not proxy.get("remoteurl"):
        raise ConfigError("proxy.remoteurl: required (regcache is a pull-through cache; "
                          "a registry:2 config without it is a plain registry)")
    url = str(proxy["remoteurl"]).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"proxy.remoteurl: must be an http(s) URL, got {url!r}")
    host = parts.hostname.lower() + (f":{parts.port}" if parts.port else "")
    # Clients name the upstream in ?ns= (containerd, BuildKit): Docker Hub is "docker.io".
    upstream: dict[str, Any] = ({"name": DOCKER_HUB["name"], "url": url, "aliases": list(DOCKER_HUB["aliases"])}
                                if host in _HUB_HOSTS else {"name": host, "url": url})
    if proxy.get("password") is not None and PASSWORD_ENV not in environ:
        environ[PASSWORD_ENV] = str(proxy["password"])
    if proxy.get("username"):
        upstream["username"] = str(proxy["username"])
    if environ.get(PASSWORD_ENV):  # without a username regcache's loader says they go together
        upstream["password_env"] = PASSWORD_ENV
    for key in sorted(set(proxy) - {"remoteurl", "username", "password", "ttl"}):
        warnings.append(_ignored(f"proxy.{key}", "not used by regcache"))
    return upstream, _ttl(proxy.get("ttl"), warnings)


def _ttl(value: Any, warnings: list[str]) -> str:
    if value is None or value == "":
        return DEFAULT_TTL
    text = str(value).strip()
    # Go durations may carry zero parts (168h0m0s) and a sign; regcache's parser takes the rest.
    if text.startswith("-") or re.fullmatch(r"0+(\.0+)?([a-zµ]+)?(0+[a-zµ]+)*", text):
        warnings.append(f"proxy.ttl: {value!r} (never expire) has no regcache equivalent; using {NEVER_TTL}")
        return NEVER_TTL
    return text


def _log(log: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "level" in log:
        level = str(log["level"]).lower()
        if level not in _LOG_LEVELS:
            raise ConfigError(f"log.level: expected error, warn, info or debug, got {log['level']!r}")
        out["level"] = _LOG_LEVELS[level]
    formatter = str(log.get("formatter") or "text").lower()
    if formatter == "logstash":
        warnings.append("log.formatter: logstash is written as json")
    out["format"] = "plain" if formatter == "text" else "json"
    accesslog = log.get("accesslog") or {}
    if "disabled" in accesslog:
        out["access_log"] = not bool(accesslog["disabled"])
    for key in sorted(set(log) - {"level", "formatter", "accesslog"}):
        warnings.append(_ignored(f"log.{key}", "not used by regcache"))
    return out


def _metrics(debug: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """distribution's Prometheus endpoint lives on the debug server; regcache's metrics.port matches it."""
    prometheus = debug.get("prometheus") or {}
    if not (debug.get("addr") and prometheus.get("enabled")):
        if debug:
            warnings.append(_ignored("http.debug", "regcache serves /metrics on its main port"))
        return {}
    address, port = _split_addr(debug["addr"], "http.debug.addr")
    if str(prometheus.get("path") or "/metrics") != "/metrics":
        warnings.append(f"http.debug.prometheus.path: regcache serves /metrics, not {prometheus['path']}")
    return {"enabled": True, "port": port, "address": address}
