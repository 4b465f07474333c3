"""Configuration loading: defaults, the example file, environment overrides, errors naming keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from regcache.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_default_mirrors_docker_hub_on_5000():
    settings = load_settings(None, {})
    assert [u.name for u in settings.upstreams] == ["docker.io"]
    assert settings.upstreams[0].url == "https://registry-1.docker.io"
    assert settings.listeners[0].port == 5000
    assert settings.storage_root == Path("./data")
    assert settings.cache.ttl == 720 * 3600


def test_example_file_matches_the_defaults():
    assert load_settings(ROOT / "config.example.yaml", {}) == load_settings(None, {})


def test_two_listeners_two_upstreams(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("""
upstreams:
  - {name: docker.io, url: "https://registry-1.docker.io", aliases: [index.docker.io]}
  - {name: ghcr.io, url: "https://ghcr.io"}
listeners:
  - {port: 5000, default_upstream: index.docker.io}
  - {port: 5001, default_upstream: ghcr.io}
cache: {ttl: 168h, max_size: 180Gi}
""")
    settings = load_settings(path, {})
    assert [l.default_upstream for l in settings.listeners] == ["docker.io", "ghcr.io"]
    assert settings.cache.max_size == 180 * 1024**3
    assert settings.upstream("ghcr.io").library_prefix is False
    assert settings.upstream("docker.io").library_prefix is True


def test_environment_overrides(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = load_settings(None, {
        "REGCACHE_STORAGE_ROOT": "/var/lib/regcache",
        "REGCACHE_CACHE_TTL": "24h",
        "REGCACHE_LOG_FORMAT": "json",
        "REGCACHE_UPSTREAMS_0_USERNAME": "bot",
        "REGCACHE_UPSTREAMS_0_PASSWORD_FILE": str(secret),
        "REGCACHE_LISTENERS_0_PORT": "6000",
    })
    assert settings.storage_root == Path("/var/lib/regcache")
    assert settings.cache.ttl == 86400
    assert settings.log.format == "json"
    assert settings.upstreams[0].password == "s3cret"
    assert settings.listeners[0].port == 6000


def test_password_never_in_repr(tmp_path):
    settings = load_settings(None, {"REGCACHE_UPSTREAMS_0_USERNAME": "bot",
                                    "REGCACHE_UPSTREAMS_0_PASSWORD_ENV": "PW", "PW": "hunter2"})
    assert settings.upstreams[0].password == "hunter2"
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize("yaml_text,message", [
    ("cache: {ttl: forever}", "cache.ttl"),
    ("cache: {max_size: lots}", "cache.max_size"),
    ("cache: {low_watermark: 0.99}", "cache.low_watermark"),
    ("cache: {tll: 1h}", "cache.tll: unknown key"),
    ("upstreams: [{name: docker.io, url: 'ftp://x'}]", "upstreams[0].url"),
    ("upstreams: [{name: 'bad name', url: 'https://x'}]", "upstreams[0].name"),
    ("upstreams: [{name: docker.io, url: 'https://u:p@x'}]", "upstreams[0].url"),
    ("upstreams: [{name: a.io, url: 'https://a'}, {name: a.io, url: 'https://b'}]", "used twice"),
    ("listeners: [{port: 70000}]", "listeners[0].port"),
    ("listeners: [{port: 5000, default_upstream: quay.io}]", "listeners[0].default_upstream"),
    ("log: {level: loud}", "log.level"),
    ("bogus: 1", "bogus"),
    ("[1, 2]", "top level"),
    ("upstreams: [{name: docker.io, url: 'https://x', username: u}]", "go together"),
    ("upstreams: [{name: docker.io, url: 'https://x', username: u, password_env: NOPE}]", "NOPE"),
])
def test_bad_config_names_key_and_problem(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(path, {})


def test_unknown_environment_setting_is_an_error():
    with pytest.raises(ConfigError, match="REGCACHE_NOPE"):
        load_settings(None, {"REGCACHE_NOPE": "1"})


def test_kubernetes_service_links_are_ignored_and_strings_stay_strings():
    settings = load_settings(None, {
        "REGCACHE_DOCKERHUB_PORT": "tcp://10.0.0.1:5000",
        "REGCACHE_DOCKERHUB_SERVICE_HOST": "10.0.0.1",
        "REGCACHE_DOCKERHUB_PORT_5000_TCP_ADDR": "10.0.0.1",
        "REGCACHE_UPSTREAMS_0_USERNAME": "0123",
        "REGCACHE_UPSTREAMS_0_PASSWORD_ENV": "PW", "PW": "x",
    })
    assert settings.upstreams[0].username == "0123"


def test_cli_reports_bad_config_and_exits_2(tmp_path, capsys):
    from regcache.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("cache: {ttl: -5}")
    assert main(["serve", "--config", str(path)]) == 2
    assert "cache.ttl" in capsys.readouterr().err
