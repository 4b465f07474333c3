"""Configuration: one YAML file, `REGCACHE_*` environment overrides, validated once at start.

Every key, its default and its meaning is listed in `config.example.yaml` at the top of the
repository. This is the only module that reads `os.environ`; the result is a frozen
`Settings` passed to everything else.

Environment overrides (applied after the file, before validation):
  REGCACHE_CONFIG                      path of the YAML file (when --config is not given)
  REGCACHE_<SECTION>_<KEY>             e.g. REGCACHE_STORAGE_ROOT, REGCACHE_CACHE_TTL,
                                       REGCACHE_CACHE_MAX_SIZE, REGCACHE_LOG_FORMAT
  REGCACHE_UPSTREAMS_<N>_<KEY>         e.g. REGCACHE_UPSTREAMS_0_URL (N counts from 0)
  REGCACHE_LISTENERS_<N>_<KEY>         e.g. REGCACHE_LISTENERS_0_PORT
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml


class ConfigError(Exception):
    """A bad configuration; the message names the key and the problem."""


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]i?|[kmgtp]i?)?[bB]?")
_SIZE_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5,
               "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4, "PI": 1024**5}


def parse_duration(value: Any, key: str) -> float:
    """Seconds from `720h`, `1h30m`, `90s`, `250ms`, `7d` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 720h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text or not re.fullmatch(rf"(?:{_DURATION_RE.pattern})+|\d+(?:\.\d+)?", text):
            raise ConfigError(f"{key}: expected a duration such as 720h, 30m or 10s, got {value!r}")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text))
    if seconds < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return seconds


def parse_size(value: Any, key: str) -> int:
    """Bytes from `180Gi`, `200G`, `512Mi` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 180Gi, got {value!r}")
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE_RE.fullmatch(str(value).strip())
        if not match:
            raise ConfigError(f"{key}: expected a size such as 180Gi, 200G or 1048576, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").upper()])
    if size < 0:
        raise ConfigError(f"{key}: must not be negative, got {value!r}")
    return size


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream registry and how to reach it."""

    name: str
    url: str
    aliases: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    # Docker Hub needs `library/` for single-component names (wire-protocol.md 6).
    library_prefix: bool = False

    @property
    def host_names(self) -> tuple[str, ...]:
        """Every name an `ns` query parameter may use for this upstream."""
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class ListenerConfig:
    address: str = "0.0.0.0"
    port: int = 5000
    default_upstream: str = "docker.io"


@dataclass(frozen=True)
class CacheConfig:
    ttl: float = 720 * 3600
    max_size: int = 0
    high_watermark: float = 0.95
    low_watermark: float = 0.85
    min_free_space: int = 1024**3
    sweep_interval: float = 3600.0
    gc_grace: float = 3600.0
    fill_timeout: float = 1800.0
    access_flush_interval: float = 30.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "plain"
    access_log: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    port: int = 0
    address: str = "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    storage_root: Path
    upstreams: tuple[UpstreamConfig, ...]
    listeners: tuple[ListenerConfig, ...]
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    warnings: tuple[str, ...] = ()

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)


DOCKER_HUB = {
    "name": "docker.io",
    "url": "https://registry-1.docker.io",
    "aliases": ["index.docker.io", "registry-1.docker.io"],
}

DEFAULTS: dict[str, Any] = {
    "storage": {"root": "./data"},
    "cache": {},
    "upstreams": [DOCKER_HUB],
    "listeners": [{"address": "0.0.0.0", "port": 5000, "default_upstream": "docker.io"}],
    "log": {},
    "metrics": {},
}

_SECTIONS = ("storage", "cache", "log", "metrics")
_LISTS = ("upstreams", "listeners")


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Load the YAML file (or the built-in default), apply REGCACHE_* overrides, validate."""
    from regcache import registry2  # imports this module

    environ = os.environ if environ is None else environ
    path = path or environ.get("REGCACHE_CONFIG") or None
    data = _read_yaml(Path(path)) if path is not None else {}
    # A registry:2 config file, or no file and REGISTRY_PROXY_REMOTEURL: read it as distribution would.
    if registry2.looks_like_registry2(data) or (not data and registry2.env_selects_registry2(environ)):
        raw, environ = registry2.convert(data, environ)
    else:
        raw = copy.deepcopy(DEFAULTS)
        raw.update(data)
        if stray := registry2.stray_env(environ):
            raw["_warnings"] = [f"{', '.join(stray)}: ignored (the config is in regcache's format)"]
    apply_env_overrides(raw, environ)
    return build_settings(raw, environ)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


# Kubernetes injects <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, <SERVICE>_PORT_5000_TCP... for
# every Service in the namespace; a Service named "regcache..." must not stop regcache.
_SERVICE_LINK_RE = re.compile(r"\w+_(SERVICE_HOST|SERVICE_PORT\w*|PORT|PORT_\d+_(TCP|UDP|SCTP)\w*)")
# Values kept as strings, not parsed as YAML (a username "yes" or "0123" stays as written).
_STRING_KEYS = {"username", "password_file", "password_env", "url", "name", "root", "address",
                "default_upstream"}


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply REGCACHE_<SECTION>_<KEY> and REGCACHE_<LIST>_<N>_<KEY> (values parsed as YAML)."""
    for name, value in sorted(environ.items()):
        if not name.startswith("REGCACHE_") or name == "REGCACHE_CONFIG":
            continue
        rest = name[len("REGCACHE_"):].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        match = re.fullmatch(rf"({'|'.join(_LISTS)})_(\d+)_(\w+)", rest)
        if section is None and match is None:
            if _SERVICE_LINK_RE.fullmatch(name):
                continue
            raise ConfigError(f"environment variable {name}: not a known setting")
        key = rest[len(section) + 1:] if section else match.group(3)  # type: ignore[union-attr]
        parsed = value if key in _STRING_KEYS or not value else yaml.safe_load(value)
        if section:
            raw.setdefault(section, {})[key] = parsed
            continue
        items = raw.setdefault(match.group(1), [])  # type: ignore[union-attr]
        index = int(match.group(2))  # type: ignore[union-attr]
        while len(items) <= index:
            items.append({})
        items[index] = dict(items[index], **{key: parsed})


def _section(raw: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: must be a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{name}.{sorted(unknown)[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return value


def build_settings(raw: dict[str, Any], environ: Mapping[str, str]) -> Settings:
    """Validate a raw mapping into Settings; every error names its key."""
    unknown = set(raw) - set(_SECTIONS) - set(_LISTS) - {"_warnings"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown top-level key")
    storage = _section(raw, "storage", {"root"})
    upstreams = tuple(_build_upstream(item, i, environ) for i, item in enumerate(_list(raw, "upstreams")))
    if not upstreams:
        raise ConfigError("upstreams: at least one upstream is required")
    _check_unique_names(upstreams)
    names = {n for u in upstreams for n in u.host_names}
    listeners = tuple(_build_listener(item, i, names, upstreams) for i, item in enumerate(_list(raw, "listeners")))
    if not listeners:
        raise ConfigError("listeners: at least one listener is required")
    if len({(l.address, l.port) for l in listeners}) != len(listeners):
        raise ConfigError("listeners: two listeners use the same address and port")
    return Settings(
        storage_root=Path(str(storage.get("root", "./data"))),
        upstreams=upstreams,
        listeners=listeners,
        cache=_build_cache(_section(raw, "cache", set(CacheConfig.__dataclass_fields__))),
        log=_build_log(_section(raw, "log", set(LogConfig.__dataclass_fields__))),
        metrics=_build_metrics(_section(raw, "metrics", set(MetricsConfig.__dataclass_fields__))),
        warnings=tuple(raw.get("_warnings", ())),
    )


def _list(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name) or []
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list")
    return value


def _build_upstream(item: Any, index: int, environ: Mapping[str, str]) -> UpstreamConfig:
    key = f"upstreams[{index}]"
    allowed = {"name", "url", "aliases", "username", "password_file", "password_env",
               "connect_timeout", "read_timeout", "library_prefix"}
    if not isinstance(item, dict):
        raise ConfigError(f"{key}: must be a mapping")
    unknown = set(item) - allowed
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
    name = str(item.get("name") or "")
    if not _is_host_name(name):
        raise ConfigError(f"{key}.name: must be a registry host name such as docker.io, got {name!r}")
    url = str(item.get("url") or "")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{key}.url: must be an http(s) URL such as https://ghcr.io, got {url!r}")
    if parts.username or parts.password:
        raise ConfigError(f"{key}.url: must not carry credentials; use username and password_file")
    aliases = item.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and _is_host_name(a) for a in aliases):
        raise ConfigError(f"{key}.aliases: must be a list of host names")
    username, password = _credentials(item, key, environ)
    is_hub = name == "docker.io" or "docker.io" in aliases
    return UpstreamConfig(
        name=name,
        url=url.rstrip("/"),
        aliases=tuple(aliases),
        username=username,
        password=password,
        connect_timeout=parse_duration(item.get("connect_timeout", "10s"), f"{key}.connect_timeout"),
        read_timeout=parse_duration(item.get("read_timeout", "60s"), f"{key}.read_timeout"),
        library_prefix=bool(item.get("library_prefix", is_hub)),
    )


def _is_host_name(text: str) -> bool:
    return bool(re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:\d+)?", text))


def _credentials(item: dict[str, Any], key: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    username = item.get("username") or None
    password_file, password_env = item.get("password_file"), item.get("password_env")
    if password_file and password_env:
        raise ConfigError(f"{key}: set password_file or password_env, not both")
    password = None
    if password_file:
        try:
            password = Path(str(password_file)).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}.password_file: cannot read {password_file}: {exc.strerror}") from exc
    elif password_env:
        if str(password_env) not in environ:
            raise ConfigError(f"{key}.password_env: environment variable {password_env} is not set")
        password = environ[str(password_env)].strip()
    if bool(username) != bool(password):
        raise ConfigError(f"{key}: username and a password (password_file or password_env) go together")
    return (str(username) if username else None), password


def _check_unique_names(upstreams: tuple[UpstreamConfig, ...]) -> None:
    seen: set[str] = set()
    for index, upstream in enumerate(upstreams):
        for host in upstream.host_names:
            if host in seen:
                raise ConfigError(f"upstreams[{index}]: name or alias {host!r} is used twice")
            seen.add(host)


def _build_listener(item: Any, index: int, names: set[str],
                    upstreams: tuple[UpstreamConfig, ...]) -> ListenerConfig:
    key = f"listeners[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{key}: must be a mapping")
    unknown = set(item) - {"address", "port", "default_upstream"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (allowed: address, port, default_upstream)")
    port = item.get("port", 5000)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{key}.port: must be a port number 0-65535, got {port!r}")
    default = str(item.get("default_upstream") or upstreams[0].name)
    if default not in names:
        raise ConfigError(f"{key}.default_upstream: {default!r} is not a configured upstream")
    canonical = next(u.name for u in upstreams if default in u.host_names)
    return ListenerConfig(address=str(item.get("address", "0.0.0.0")), port=port, default_upstream=canonical)


def _build_cache(section: dict[str, Any]) -> CacheConfig:
    durations = {"ttl", "sweep_interval", "gc_grace", "fill_timeout", "access_flush_interval"}
    sizes = {"max_size", "min_free_space"}
    values: dict[str, Any] = {}
    for name, value in section.items():
        key = f"cache.{name}"
        if name in durations:
            values[name] = parse_duration(value, key)
        elif name in sizes:
            values[name] = parse_size(value, key)
        else:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ConfigError(f"{key}: must be a fraction between 0 and 1, got {value!r}")
            values[name] = float(value)
    cache = CacheConfig(**values)
    if cache.low_watermark >= cache.high_watermark:
        raise ConfigError("cache.low_watermark: must be below cache.high_watermark")
    if cache.ttl == 0:
        raise ConfigError("cache.ttl: must be greater than 0")
    return cache


def _build_log(section: dict[str, Any]) -> LogConfig:
    level = str(section.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level: must be debug, info, warning or error, got {level!r}")
    fmt = str(section.get("format", "plain")).lower()
    if fmt not in ("plain", "json"):
        raise ConfigError(f"log.format: must be plain or json, got {fmt!r}")
    access = section.get("access_log", True)
    if not isinstance(access, bool):
        raise ConfigError(f"log.access_log: must be true or false, got {access!r}")
    return LogConfig(level=level, format=fmt, access_log=access)


def _build_metrics(section: dict[str, Any]) -> MetricsConfig:
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"metrics.enabled: must be true or false, got {enabled!r}")
    port = section.get("port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics.port: must be a port number (0 = only on the main listeners), got {port!r}")
    return MetricsConfig(enabled=enabled, port=port, address=str(section.get("address", "0.0.0.0")))

