"""Issue 5 acceptance for logs: one access line per request (plain logfmt or JSON) with
time, method, path, status, body bytes, duration, upstream, cache result and client; the
log level and the access-log switch; and no upstream credential or token in any log line
of a run that used credentials, with debug logging on.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from regcache.app import create_app
from regcache.config import LogConfig, build_settings
from regcache.log import JsonFormatter, PlainFormatter, redact, setup_logging
from tests.fakes.fixtures import fake, make_settings  # noqa: F401  (fixture)
from tests.fakes.registry import Fault
from tests.support.client_skopeo import Skopeo
from tests.support.regcache_proc import RegcacheProcess

LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
PLAIN_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) INFO regcache\.access: (.*)$")
CLIENT_SECRET = "client-secret-6f1d2c"    # what a client might send us; never logged either
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}")  # every JWT (Hub and ghcr tokens) starts like this


@contextmanager
def captured(formatter: logging.Formatter, logger: str = "regcache.access") -> Iterator[io.StringIO]:
    """The formatted output of one logger, through regcache's own formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    target = logging.getLogger(logger)
    old_level = target.level
    target.addHandler(handler)
    target.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)


def real_settings(root: Path, upstream: Any, *, credentials: bool = False, **log: Any):
    return build_settings({
        "storage": {"root": str(root)},
        "upstreams": [upstream.config_entry(credentials=credentials)],
        "listeners": [{"address": "127.0.0.1", "port": 0, "default_upstream": "docker.io"}],
        "log": {"level": "debug", **log},
    }, {})


async def serve(settings) -> TestClient:
    client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    return client


def plain_fields(text: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        match = PLAIN_LINE.match(line)
        assert match, f"not a plain access line: {line!r}"
        fields = {k: json.loads(v) if v.startswith('"') else v for k, v in LOGFMT.findall(match[2])}
        fields["time"] = match[1]
        out.append(fields)
    return out


# -- the access log ----------------------------------------------------------------------
async def test_plain_access_lines_for_miss_hit_head_range_and_stale(hub_upstream, tmp_path):
    image = hub_upstream.image("library/hello:latest")
    layer = image.layer_digests[0]
    size = len(image.blobs[layer])
    client = await serve(real_settings(tmp_path / "data", hub_upstream))
    accept = {"Accept": image.media_type}
    try:
        with captured(PlainFormatter()) as out:
            assert (await client.get("/v2/library/hello/manifests/latest", headers=accept)).status == 200
            for _ in range(2):
                resp = await client.get(f"/v2/library/hello/blobs/{layer}")
                assert await resp.read() == image.blobs[layer]
            assert (await client.head(f"/v2/library/hello/blobs/{layer}")).status == 200
            resp = await client.get(f"/v2/library/hello/blobs/{layer}", headers={"Range": "bytes=10-109"})
            assert resp.status == 206 and len(await resp.read()) == 100
            with hub_upstream.down():
                resp = await client.get(f"/v2/hello/manifests/latest?ns=docker.io&access_token={CLIENT_SECRET}",
                                        headers=accept)
                assert resp.status == 200
            assert (await client.get("/v2/library/hello/manifests/nope", headers=accept)).status == 404
        lines = plain_fields(out.getvalue())
    finally:
        await client.close()
    assert len(lines) == 7  # one line per request
    manifest_path = "/v2/library/hello/manifests/latest"
    blob_path = f"/v2/library/hello/blobs/{layer}"
    expected = [
        ("GET", manifest_path, "200", str(len(image.manifest)), "MISS"),
        ("GET", blob_path, "200", str(size), "MISS"),
        ("GET", blob_path, "200", str(size), "HIT"),   # sendfile: the body bytes, not the headers
        ("HEAD", blob_path, "200", "0", "HIT"),
        ("GET", blob_path, "206", "100", "HIT"),
        ("GET", "/v2/hello/manifests/latest?ns=docker.io", "200", str(len(image.manifest)), "STALE"),
        ("GET", "/v2/library/hello/manifests/nope", "404", None, "-"),
    ]
    for fields, (method, path, status, size_text, cache) in zip(lines, expected):
        assert (fields["method"], fields["path"], fields["status"], fields["cache"]) == (method, path, status, cache)
        if size_text is not None:
            assert fields["bytes"] == size_text
        assert fields["client"] == "127.0.0.1"
        assert fields["upstream"] == "docker.io"
        assert float(fields["duration_s"]) > 0
    assert CLIENT_SECRET not in out.getvalue()


async def test_json_access_lines_and_joined_clients(fake, tmp_path):
    """JSON format, one object per line; two clients of one slow download (fake
    upstream: a slow body is a fault a real registry does not produce on demand)."""
    fake.chunk_size = 16 * 1024
    data = os.urandom(20 * fake.chunk_size)
    digest = fake.add_blob(data)
    fake.faults[digest] = Fault(chunk_delay=0.02)
    client = await serve(make_settings(tmp_path / "data", fake.base_url))
    try:
        with captured(JsonFormatter()) as out:
            first = asyncio.create_task(client.get(f"/v2/library/slow/blobs/{digest}"))
            while not fake.count("GET", f"/blobs/{digest}"):
                await asyncio.sleep(0.005)
            second = await client.get(f"/v2/library/slow/blobs/{digest}")
            assert await second.read() == data
            assert await (await first).read() == data
            # A line is written when its response has ended, which the server sees a moment
            # after the client has the last byte (the body is sent from a thread).
            for _ in range(200):
                if len(out.getvalue().splitlines()) >= 2:
                    break
                await asyncio.sleep(0.01)
        entries = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        await client.close()
    assert sorted(e["cache"] for e in entries) == ["JOINED", "MISS"]
    for entry in entries:
        assert entry["msg"] == "request" and entry["logger"] == "regcache.access"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert (entry["method"], entry["path"], entry["status"]) == ("GET", f"/v2/library/slow/blobs/{digest}", 200)
        assert entry["bytes"] == len(data) and entry["duration_s"] > 0
        assert entry["upstream"] == "docker.io" and entry["client"] == "127.0.0.1"


async def test_access_log_switch_off(fake, tmp_path):
    settings = build_settings({
        "storage": {"root": str(tmp_path / "data")},
        "upstreams": [{"name": "docker.io", "url": fake.base_url}],
        "listeners": [{"address": "127.0.0.1", "port": 0}],
        "log": {"access_log": False},
    }, {})
    client = await serve(settings)
    try:
        with captured(PlainFormatter()) as out:
            assert (await client.get("/v2/")).status == 200
            assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()
    assert out.getvalue() == ""


def test_setup_logging_level_and_format():
    """log.level filters regcache's own messages; access lines stay (log.access_log is
    their switch); JSON mode writes one object per line."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        for fmt in ("plain", "json"):
            stream = io.StringIO()
            setup_logging(LogConfig(level="warning", format=fmt, access_log=True), stream)
            logging.getLogger("regcache.proxy").info("hidden at warning")
            logging.getLogger("regcache.proxy").warning("shown at warning")
            logging.getLogger("regcache.access").info("method=GET path=/v2/", extra={"access": {"method": "GET"}})
            lines = stream.getvalue().splitlines()
            assert len(lines) == 2, lines
            assert "hidden" not in stream.getvalue()
            if fmt == "json":
                first, second = (json.loads(line) for line in lines)
                assert first["level"] == "warning" and first["msg"] == "shown at warning"
                assert second["method"] == "GET" and second["msg"] == "request"
            else:
                assert re.match(r"^\d{4}-\d\d-\d\dT[\d:.]+Z WARNING regcache\.proxy: shown at warning$", lines[0])
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_redact_blanks_credential_shapes():
    """The formatters' second line of defence (nothing should hand them a credential)."""
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ0In0.c2lnbmF0dXJl"
    text = (f"Authorization: Bearer {token} Basic dXNlcjpwYXNz https://user:pw@host/x "
            f"/token?scope=x&access_token=abc password=hunter2")
    cleaned = redact(text)
    for secret in (token, "dXNlcjpwYXNz", "user:pw", "abc", "hunter2"):
        assert secret not in cleaned
    assert redact("GET /v2/library/alpine/manifests/3 status=200") == "GET /v2/library/alpine/manifests/3 status=200"


# -- credentials never logged ------------------------------------------------------------
def secrets_of(upstream: Any) -> list[str]:
    """Every form of the upstream credentials a log line could carry."""
    basic = base64.b64encode(f"{upstream.username}:{upstream.password}".encode()).decode()
    return [upstream.password, basic, CLIENT_SECRET]


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a credential is in the log: {secret[:6]}..."
    leaked = JWT.findall(text)
    assert not leaked, f"a token is in the log: {leaked[0][:12]}..."


async def _pull_with_credentials(base_url: str, upstream: Any) -> None:
    """Pulls that need the upstream credentials, plus a client that sends its own."""
    private = upstream.image("private/app:1")
    client_auth = "Basic " + base64.b64encode(f"runner:{CLIENT_SECRET}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": client_auth}) as http:
        async with http.get(f"{base_url}/v2/private/app/manifests/1", headers={"Accept": private.media_type}) as resp:
            assert resp.status == 200
        for digest in private.blobs:
            async with http.get(f"{base_url}/v2/private/app/blobs/{digest}") as resp:
                assert resp.status == 200 and await resp.read() == private.blobs[digest]
        async with http.get(f"{base_url}/v2/private/app/manifests/1?access_token={CLIENT_SECRET}") as resp:
            assert resp.status == 200
        # Errors: an unknown repository, and the token service failing for a new scope.
        async with http.get(f"{base_url}/v2/private/missing/manifests/1") as resp:
            assert resp.status >= 400
        upstream.token_server.failure_status = 500
        async with http.get(f"{base_url}/v2/library/multi/manifests/latest") as resp:
            assert resp.status >= 500
        upstream.token_server.failure_status = None


async def test_no_credential_or_token_in_debug_records(hub_upstream, tmp_path, caplog):
    """Every record of every logger at DEBUG, taken before any formatter (so before
    `redact`): the code itself never hands a credential or a token to a logger."""
    caplog.set_level(logging.DEBUG)
    client = await serve(real_settings(tmp_path / "data", hub_upstream, credentials=True))
    try:
        await _pull_with_credentials(str(client.make_url("")).rstrip("/"), hub_upstream)
        with hub_upstream.down():
            resp = await client.get("/v2/private/app/manifests/1")
            assert resp.status == 200  # stale
    finally:
        await client.close()
    assert any(t.basic_auth for t in hub_upstream.token_requests())  # credentials were used
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.__dict__))
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    assert any(r.name == "regcache.access" for r in caplog.records)
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert_no_secret("\n".join(texts), secrets_of(hub_upstream))


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_no_credential_or_token_in_the_servers_output(hub_upstream, tmp_path, fmt):
    """The real CLI at debug level, pulled through by skopeo and by a client sending its
    own credentials; the whole output (stdout and stderr) is searched."""
    proc = RegcacheProcess(tmp_path / "rc", upstreams=[hub_upstream.config_entry(credentials=True)],
                           log={"level": "debug", "format": fmt})
    with proc:
        skopeo = Skopeo(tmp_path / "skopeo", mirror=proc.host)
        image = hub_upstream.image("private/app:1")
        result = await skopeo.copy_to_dir(skopeo.direct_ref("private/app:1"), tmp_path / "out", all_=True)
        assert result.digest == image.digest
        await _pull_with_credentials(proc.url, hub_upstream)
        with hub_upstream.down():
            await skopeo.copy_to_dir(skopeo.direct_ref("private/app:1"), tmp_path / "stale", all_=True)
    output = proc.log_text()
    assert any(t.basic_auth for t in hub_upstream.token_requests())
    access = [line for line in output.splitlines() if "regcache.access" in line]
    assert len(access) >= 8 and any("STALE" in line for line in access)
    assert (" DEBUG regcache." if fmt == "plain" else '"level": "debug"') in output  # debug records written
    assert_no_secret(output, secrets_of(hub_upstream))
