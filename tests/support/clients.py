"""Real registry clients pulling through a mirror URL, isolated from the host.

One import for tests; the pieces live in the client_* modules:

    from tests.support.clients import (Containerd, Dockerd, Podman, Skopeo,
                                       RecordingProxy, PullResult, ClientError)

All harnesses are async (they run clients as asyncio subprocesses), so
regcache can run in-process on the test's event loop. `mirror` is always a
plain-HTTP "127.0.0.1:PORT" (an "http://..." URL is accepted too) used for
docker.io and ghcr.io; Skopeo, Podman and Containerd also take a dict
registry -> host:port. skopeo and podman send no ?ns=, so against a regcache
they need one listener per registry:
    Skopeo(wd, {"docker.io": rc.host, "ghcr.io": rc.hosts[1]})
containerd sends ?ns=<registry>, so one port serves both. Every
client gets HTTP(S)_PROXY=http://127.0.0.1:9 and NO_PROXY=127.0.0.1,localhost:
a fallback to the real Docker Hub / ghcr.io fails locally at once.

    # skopeo: direct (docker://127.0.0.1:PORT/...) or mirror mode (docker.io/...)
    sk = Skopeo(tmp_path / "sk", mirror)
    r = await sk.copy_to_dir(sk.direct_ref("library/alpine:3"), tmp_path / "out")
    r = await sk.copy_to_oci("docker://docker.io/library/alpine:3", tmp_path / "oci", "3")
    digest = await sk.inspect_digest("docker://ghcr.io/org/app:1")

    # containerd + ctr (Docker 29 DinD / BuildKit pull path, sends ?ns=)
    async with Containerd(tmp_path / "ctd", mirror) as ctd:
        r = await ctd.pull("docker.io/library/alpine:3")
        r = await ctd.pull("ghcr.io/org/app:1")
        print(await ctd.run("docker.io/library/busybox:latest", "echo", "hi"))

    # dockerd 20.10 with --registry-mirror (legacy graphdriver engine)
    async with Dockerd(tmp_path / "dockerd", mirror) as d:
        r = await d.pull("alpine:3")
        print(await d.run("busybox:latest", "echo", "hi"))

    # podman with a mirror registries.conf
    async with Podman(tmp_path / "pm", mirror) as pm:
        r = await pm.pull("docker.io/library/alpine:3")
        print(await pm.run("docker.io/library/busybox:latest", "echo", "hi"))

    # what a client sent: put a RecordingProxy between client and mirror
    async with RecordingProxy(f"http://{mirror}") as rec:
        await Skopeo(tmp_path / "sk", rec.host).inspect_raw(...)
        rec.requests  # [Recorded(method, path, query, accept, headers, status)]
"""

from .client_containerd import Containerd, hosts_toml
from .client_dockerd import Dockerd
from .client_podman import Podman
from .client_proc import ClientError, client_env, isolated_argv
from .client_recorder import Recorded, RecordingProxy
from .client_result import PullResult
from .client_skopeo import Skopeo, mirror_registries_conf

__all__ = [
    "ClientError", "Containerd", "Dockerd", "Podman", "PullResult", "Recorded",
    "RecordingProxy", "Skopeo", "client_env", "hosts_toml", "isolated_argv",
    "mirror_registries_conf",
]
