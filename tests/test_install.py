"""`pip install .` into a fresh virtualenv, then `regcache serve` with the built-in default."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from tests.support.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_fresh_venv_install_serves_v2(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, str(ROOT)], check=True, timeout=600)
    port = free_port()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    # Only the address and port are overridden (loopback, a free port); everything else is
    # the built-in default: Docker Hub upstream, storage under ./data.
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "REGCACHE_LISTENERS_0_ADDRESS": "127.0.0.1",
           "REGCACHE_LISTENERS_0_PORT": str(port), "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.Popen([str(env_dir / "bin" / "regcache"), "serve"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_http(port, "/v2/", proc=proc) == 200
        assert (workdir / "data" / "v1" / "blobs").is_dir()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"listening on 127.0.0.1:" in out
