"""The Helm chart (helm/regcache) and the ARC example values, rendered with the real `helm` binary.

Every rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail); the regcache config each pod mounts is loaded with regcache's own
loader. ARC's gha-runner-scale-set chart can't be committed here: test_arc_chart_renders_example
runs when ARC_CHART_DIR points at a checkout of it (charts/gha-runner-scale-set).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helm_tool import CHART, KUBE_VERSION, REPO, find, helm, render, values_args
from regcache.config import load_settings

ALL_ON = CHART / "ci" / "all-on-values.yaml"
ARC = REPO / "examples" / "arc"
GiB = 1024**3


@pytest.fixture(scope="module")
def default_objects() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def all_on_objects() -> list[dict]:
    return render([ALL_ON])


def by_name(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in find(objects, kind)}


def mirror_config(objects: list[dict], name: str) -> dict:
    return yaml.safe_load(by_name(objects, "ConfigMap")[name]["data"]["config.yaml"])


def load_mounted_config(objects: list[dict], name: str, tmp_path: Path,
                        environ: dict[str, str] | None = None):
    """Load a mirror's config.yaml with regcache's loader, as the pod would (secrets faked)."""
    raw = mirror_config(objects, name)
    for upstream in raw["upstreams"]:
        if "password_file" in upstream:  # the Secret mount exists only in the pod
            secret = tmp_path / f"{name}-password"
            secret.write_text("s3cret\n")
            upstream["password_file"] = str(secret)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_settings(path, environ or {})


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def mounts(container: dict) -> dict[str, dict]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


# --- lint and schema validation ------------------------------------------------------------

@pytest.mark.parametrize("values", [[], [ALL_ON]], ids=["defaults", "all-on"])
def test_helm_lint_strict(values):
    out = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values_args(values))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("fixture", ["default_objects", "all_on_objects"])
def test_every_object_validates_strictly(fixture, request):
    objects = request.getfixturevalue(fixture)
    assert objects
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":  # a CRD: no bundled schema; checked in its own test
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# --- defaults --------------------------------------------------------------------------------

def test_defaults_two_mirrors_200gi_720h(default_objects, tmp_path):
    deployments = by_name(default_objects, "Deployment")
    assert set(deployments) == {"regcache-dockerhub", "regcache-ghcr"}
    claims = by_name(default_objects, "PersistentVolumeClaim")
    assert set(claims) == set(deployments)
    for name, claim in claims.items():
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        settings = load_mounted_config(default_objects, name, tmp_path)
        assert settings.cache.ttl == 720 * 3600
        # 90% of the volume, so LRU eviction starts before the disk is full.
        assert settings.cache.max_size == 200 * GiB * 9 // 10
    hub = load_mounted_config(default_objects, "regcache-dockerhub", tmp_path)
    ghcr = load_mounted_config(default_objects, "regcache-ghcr", tmp_path)
    assert [(u.name, u.url) for u in hub.upstreams] == [("docker.io", "https://registry-1.docker.io")]
    assert hub.upstreams[0].library_prefix
    assert [(u.name, u.url) for u in ghcr.upstreams] == [("ghcr.io", "https://ghcr.io")]
    assert hub.listeners[0].default_upstream == "docker.io"
    assert ghcr.listeners[0].default_upstream == "ghcr.io"
    # Optional pieces are off by default.
    kinds = {o["kind"] for o in default_objects}
    assert kinds == {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "CronJob"}
    assert len(find(default_objects, "ConfigMap")) == 2


@pytest.mark.parametrize("fixture", ["default_objects", "all_on_objects"])
def test_pods_mount_a_config_regcache_accepts(fixture, request, tmp_path):
    """Every mirror's config loads, and the pod wires port, data volume and config path to it."""
    objects = request.getfixturevalue(fixture)
    services = by_name(objects, "Service")
    deployments = by_name(objects, "Deployment")
    assert deployments
    for name, deploy in deployments.items():
        container = pod_spec(deploy)["containers"][0]
        environ = {}
        for env in container.get("env", []):
            if env["name"] == "REGCACHE_UPSTREAMS_0_USERNAME":  # from the Secret in the pod
                environ[env["name"]] = "robot"
        settings = load_mounted_config(objects, name, tmp_path, environ)
        assert container["args"][:3] == ["serve", "--config", "/etc/regcache/config.yaml"]
        assert mounts(container)["/etc/regcache"]["name"] == "config"
        config_volume = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == "config")
        assert config_volume["configMap"]["name"] == name
        data = mounts(container)[str(settings.storage_root)]
        assert data["name"] == "data" and not data.get("readOnly")
        assert mounts(container)["/tmp"]["name"] == "tmp"
        port = container["ports"][0]
        assert port["containerPort"] == settings.listeners[0].port
        svc_port = services[name]["spec"]["ports"][0]
        assert svc_port["targetPort"] == port["name"] == "http"
        # The pod restarts when its config changes (the block scalar adds the final newline).
        text = by_name(objects, "ConfigMap")[name]["data"]["config.yaml"].removesuffix("\n")
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == digest


def test_deployment_shape(default_objects):
    deployments = find(default_objects, "Deployment")
    assert deployments
    for deploy in deployments:
        spec = deploy["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}  # RWO volume: never two pods at once
        pod = pod_spec(deploy)
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"] and container["resources"]["limits"]
        # The Service selects exactly this Deployment's pods.
        svc = by_name(default_objects, "Service")[deploy["metadata"]["name"]]
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert deploy["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_no_service_link_variables(default_objects):
    """The kubelet would give every pod REGCACHE_DOCKERHUB_PORT=tcp://... for the Service
    regcache-dockerhub, and regcache reads REGCACHE_* variables as settings."""
    pods = find(default_objects, "Deployment") + find(default_objects, "CronJob")
    assert {o["kind"] for o in pods} == {"Deployment", "CronJob"}
    for obj in pods:
        assert pod_spec(obj)["enableServiceLinks"] is False


# --- gc CronJob ------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["default_objects", "all_on_objects"])
def test_gc_cronjob_reaches_its_volume(fixture, request):
    objects = request.getfixturevalue(fixture)
    deployments = by_name(objects, "Deployment")
    claims = by_name(objects, "PersistentVolumeClaim")
    cronjobs = by_name(objects, "CronJob")
    assert cronjobs
    for name, deploy in deployments.items():
        server_pod = pod_spec(deploy)
        data = next(v for v in server_pod["volumes"] if v["name"] == "data")
        if "emptyDir" in data:  # nothing another pod could reach; the server's own sweep runs
            assert f"{name}-gc" not in cronjobs
            continue
        cron = cronjobs[f"{name}-gc"]
        assert len(cron["metadata"]["name"]) <= 52
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        job_pod = pod_spec(cron)
        (gc,) = job_pod["containers"]
        assert gc["args"][:3] == ["gc", "--config", "/etc/regcache/config.yaml"]
        assert gc["image"] == server_pod["containers"][0]["image"]
        # Same claim, same mount path, same config as the server.
        job_volumes = {v["name"]: v for v in job_pod["volumes"]}
        assert job_volumes["data"] == data
        assert job_volumes["config"] == next(v for v in server_pod["volumes"] if v["name"] == "config")
        assert mounts(gc) == mounts(server_pod["containers"][0])
        claim_name = data["persistentVolumeClaim"]["claimName"]
        modes = claims[claim_name]["spec"]["accessModes"] if claim_name in claims else ["ReadWriteOnce"]
        if "ReadWriteMany" in modes:
            assert "podAffinity" not in job_pod.get("affinity", {})
        else:
            # ReadWriteOnce: the Job must land on the node that has the volume attached.
            (term,) = job_pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["topologyKey"] == "kubernetes.io/hostname"
            selector = term["labelSelector"]["matchLabels"]
            assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
            # ...and must not match itself or another mirror's pods.
            assert not selector.items() <= cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
            for other, other_deploy in deployments.items():
                if other != name:
                    assert not selector.items() <= other_deploy["spec"]["template"]["metadata"]["labels"].items()
            assert job_pod.get("tolerations") == server_pod.get("tolerations")


# --- the everything-on values ------------------------------------------------------------------

def test_all_on_objects(all_on_objects, tmp_path):
    deployments = by_name(all_on_objects, "Deployment")
    assert set(deployments) == {"regcache-dockerhub", "regcache-ghcr", "regcache-quay", "regcache-scratch"}
    claims = by_name(all_on_objects, "PersistentVolumeClaim")
    assert set(claims) == {"regcache-dockerhub", "regcache-quay"}  # ghcr: existingClaim; scratch: emptyDir
    assert claims["regcache-quay"]["spec"]["storageClassName"] == ""
    assert "helm.sh/resource-policy" not in claims["regcache-quay"]["metadata"]["annotations"]
    assert claims["regcache-dockerhub"]["spec"]["storageClassName"] == "fast-ssd"
    ghcr_data = next(v for v in pod_spec(deployments["regcache-ghcr"])["volumes"] if v["name"] == "data")
    assert ghcr_data["persistentVolumeClaim"]["claimName"] == "ghcr-cache-old"
    assert deployments["regcache-scratch"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert by_name(all_on_objects, "Service")["regcache-dockerhub"]["spec"]["clusterIP"] == "10.96.200.10"

    # Credentials: password as a mounted Secret file, username from the Secret or the values.
    hub_pod = pod_spec(deployments["regcache-dockerhub"])
    secret = next(v for v in hub_pod["volumes"] if v["name"] == "upstream-credentials")["secret"]
    assert secret["secretName"] == "dockerhub-token"
    assert secret["items"] == [{"key": "token", "path": "password"}]
    hub_raw = mirror_config(all_on_objects, "regcache-dockerhub")
    assert hub_raw["upstreams"][0]["password_file"] == "/run/secrets/regcache-upstream/password"
    assert mounts(hub_pod["containers"][0])["/run/secrets/regcache-upstream"]["readOnly"] is True
    (env_user,) = [e for e in hub_pod["containers"][0]["env"] if e["name"] == "REGCACHE_UPSTREAMS_0_USERNAME"]
    assert env_user["valueFrom"]["secretKeyRef"] == {"name": "dockerhub-token", "key": "username"}
    hub = load_mounted_config(all_on_objects, "regcache-dockerhub", tmp_path,
                              {"REGCACHE_UPSTREAMS_0_USERNAME": "robot"})
    assert (hub.upstreams[0].username, hub.upstreams[0].password) == ("robot", "s3cret")
    assert hub.cache.max_size == 180 * GiB
    ghcr = load_mounted_config(all_on_objects, "regcache-ghcr", tmp_path)
    assert ghcr.upstreams[0].username == "ci-bot"
    assert ghcr.cache.max_size == 500 * GiB * 9 // 10
    assert ghcr.cache.ttl == 336 * 3600 and ghcr.cache.min_free_space == 5 * GiB
    assert ghcr.log.level == "debug" and ghcr.log.access_log is False
    scratch = load_mounted_config(all_on_objects, "regcache-scratch", tmp_path)
    assert scratch.cache.max_size == 0  # emptyDir: no size to derive a cap from

    image = pod_spec(deployments["regcache-quay"])["containers"][0]["image"]
    assert image == "registry.example.com/platform/regcache@sha256:" + "0123456789abcdef" * 4

    (monitor,) = find(all_on_objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    for svc in find(all_on_objects, "Service"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert "http" in [p["name"] for p in svc["spec"]["ports"]]

    dashboard = by_name(all_on_objects, "ConfigMap")["regcache-dashboard"]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((REPO / "dashboards" / "regcache.json").read_text())
    assert json.loads(dashboard["data"]["regcache.json"]) == shipped


def test_client_config(all_on_objects):
    clients = [o for o in find(all_on_objects, "ConfigMap") if o["metadata"]["name"] == "regcache-client-config"]
    assert sorted(c["metadata"]["namespace"] for c in clients) == ["arc-runners", "arc-runners-gpu"]
    data = clients[0]["data"]
    host = {m: f"regcache-{m}.regcache.svc.cluster.local:5000" for m in ("dockerhub", "ghcr", "quay", "scratch")}
    daemon = json.loads(data["daemon.json"])
    assert daemon["registry-mirrors"] == [f"http://{host['dockerhub']}"]  # dockerd mirrors docker.io only
    assert sorted(daemon["insecure-registries"]) == sorted(host.values())
    buildkit = tomllib.loads(data["buildkitd.toml"])["registry"]
    assert buildkit["docker.io"] == {"mirrors": [host["dockerhub"]]}
    assert buildkit["ghcr.io"] == {"mirrors": [host["ghcr"]]}
    assert buildkit["registry.k8s.io"] == {"mirrors": [host["scratch"]]}
    for mirror_host in host.values():  # plain HTTP is set in the mirror host's own section
        assert buildkit[mirror_host] == {"http": True}
    hub_hosts = tomllib.loads(data["docker.io.hosts.toml"])
    assert hub_hosts == {"server": "https://registry-1.docker.io",
                         "host": {"http://10.96.200.10:5000": {"capabilities": ["pull", "resolve"]}}}
    ghcr_hosts = tomllib.loads(data["ghcr.io.hosts.toml"])
    assert ghcr_hosts["host"] == {f"http://{host['ghcr']}": {"capabilities": ["pull", "resolve"]}}


def test_long_release_name_stays_within_limits():
    # 53 characters: the longest release name helm accepts; 20: the longest mirror name.
    objects = render(release="r" * 53, values=[{"mirrors": {"verylongmirrorname12": {
        "upstream": {"name": "quay.io", "url": "https://quay.io"}}}}])
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 for n in names)
    assert all(len(o["metadata"]["name"]) <= 52 for o in find(objects, "CronJob"))
    assert len(set((o["kind"], n) for o, n in zip(objects, names))) == len(objects)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_config_change_rolls_only_that_mirror(default_objects):
    changed = render([{"mirrors": {"ghcr": {"ttl": "168h"}}}])

    def checksums(objects):
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in find(objects, "Deployment")}
    before, after = checksums(default_objects), checksums(changed)
    assert before["regcache-dockerhub"] == after["regcache-dockerhub"]
    assert before["regcache-ghcr"] != after["regcache-ghcr"]


def test_disabling_a_mirror_and_gc():
    objects = render([{"mirrors": {"ghcr": {"enabled": False}, "dockerhub": {"gc": {"enabled": False}}}}])
    assert set(by_name(objects, "Deployment")) == {"regcache-dockerhub"}
    assert find(objects, "CronJob") == []


def test_notes_print_the_mirror_addresses():
    # A client-side dry run renders NOTES.txt without a cluster.
    out = helm("install", "regcache", str(CHART), "-n", "regcache", "--dry-run=client",
               *values_args([ARC / "regcache-values.yaml"])).stdout
    notes = out.split("NOTES:", 1)[1]
    assert "docker.io -> http://regcache-dockerhub.regcache.svc.cluster.local:5000" in notes
    assert "ghcr.io -> http://regcache-ghcr.regcache.svc.cluster.local:5000" in notes
    assert "--registry-mirror=http://regcache-dockerhub.regcache.svc.cluster.local:5000" in notes
    assert "regcache-client-config in namespace(s): arc-runners" in notes


# --- what the chart refuses ----------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ({"defaults": {"ttl": "30 days"}}, "/defaults/ttl"),
    ({"defaults": {"ttl": "0h"}}, "/defaults/ttl"),
    ({"mirrors": {"ghcr": {"ttl": "720"}}}, "/mirrors/ghcr/ttl"),
    ({"defaults": {"persistence": {"size": "200GB"}}}, "/defaults/persistence/size"),
    ({"mirrors": {"dockerhub": {"persistence": {"size": "1.5Ti"}}}}, "/mirrors/dockerhub/persistence/size"),
    ({"mirrors": {"Docker_Hub": {"upstream": {"name": "docker.io", "url": "https://registry-1.docker.io"}}}},
     "invalid propertyName 'Docker_Hub'"),
    ({"mirrors": {"a-mirror-name-way-too-long": {"upstream": {"name": "quay.io", "url": "https://quay.io"}}}},
     "invalid propertyName"),
    ({"mirrors": {"ghcr": {"upstream": {"name": "ghcr.io", "url": "ftp://ghcr.io"}}}}, "/mirrors/ghcr/upstream/url"),
    ({"mirrors": {"quay": {"upstream": {"url": "https://quay.io"}}}}, "missing property 'name'"),
    ({"mirrors": {"ghcr": {"tll": "720h"}}}, "additional properties 'tll' not allowed"),
    ({"defaults": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}}, "/defaults/persistence/accessModes/0"),
])
def test_schema_rejects(values, message):
    out = helm("template", "r", str(CHART), *values_args([values]), check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr
    assert message in out.stderr


@pytest.mark.parametrize("values, message", [
    ({"defaults": {"persistence": {"accessModes": ["ReadWriteOncePod"]}}}, "can't share a ReadWriteOncePod volume"),
    ({"mirrors": {"dockerhub": {"credentials": {"existingSecret": "hub"}}}}, "needs username or usernameKey"),
    ({"mirrors": {"dockerhub": {"credentials": {"username": "me"}}}}, "needs existingSecret"),
])
def test_template_refuses(values, message):
    out = helm("template", "r", str(CHART), *values_args([values]), check=False)
    assert out.returncode != 0 and message in out.stderr


# --- ARC example ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def arc_values() -> dict:
    return yaml.safe_load((ARC / "runner-scale-set-values.yaml").read_text())


@pytest.fixture(scope="module")
def arc_regcache_objects() -> list[dict]:
    return render([ARC / "regcache-values.yaml"], release="regcache", namespace="regcache")


def test_arc_regcache_values_render(arc_regcache_objects):
    out = helm("lint", "--strict", str(CHART), *values_args([ARC / "regcache-values.yaml"]))
    assert "0 chart(s) failed" in out.stdout
    assert by_name(arc_regcache_objects, "Deployment")  # something rendered to validate
    for obj in arc_regcache_objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_arc_runner_pod_template_is_a_valid_pod(arc_values):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runner"},
           "spec": arc_values["template"]["spec"]}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
    assert arc_values["containerMode"]["type"] == "kubernetes"  # dind mode would drop our sidecar
    assert (arc_values["minRunners"], arc_values["maxRunners"]) == (0, 10)


def test_arc_dind_mirror_flag_points_at_the_chart_service(arc_values, arc_regcache_objects):
    services = by_name(arc_regcache_objects, "Service")
    hub = services["regcache-dockerhub"]
    hub_host = f"{hub['metadata']['name']}.{hub['metadata']['namespace']}.svc.cluster.local:{hub['spec']['ports'][0]['port']}"
    hub_config = mirror_config(arc_regcache_objects, "regcache-dockerhub")
    assert hub_config["upstreams"][0]["name"] == "docker.io"  # --registry-mirror serves docker.io only
    (dind,) = [c for c in arc_values["template"]["spec"]["initContainers"] if c["name"] == "dind"]
    assert dind["restartPolicy"] == "Always"  # native sidecar
    assert dind["securityContext"]["privileged"] is True
    assert f"--registry-mirror=http://{hub_host}" in dind["args"]
    insecure = {a.split("=", 1)[1] for a in dind["args"] if a.startswith("--insecure-registry=")}
    ghcr = services["regcache-ghcr"]
    assert insecure == {hub_host, f"{ghcr['metadata']['name']}.regcache.svc.cluster.local:5000"}
    # The runner reaches this dockerd through the shared socket.
    (runner,) = [c for c in arc_values["template"]["spec"]["containers"] if c["name"] == "runner"]
    assert {"name": "DOCKER_HOST", "value": "unix:///var/run/docker.sock"} in runner["env"]
    assert mounts(runner)["/var/run"]["name"] == mounts(dind)["/var/run"]["name"]


def test_arc_buildkitd_config_mounted_where_buildx_reads_it(arc_values, arc_regcache_objects):
    (client,) = [o for o in find(arc_regcache_objects, "ConfigMap") if "buildkitd.toml" in o.get("data", {})]
    # Rendered into the runners' namespace (where the runner set is installed: -n arc-runners).
    assert client["metadata"]["namespace"] == "arc-runners"
    spec = arc_values["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (runner,) = [c for c in spec["containers"] if c["name"] == "runner"]
    # buildx: $DOCKER_CONFIG/buildx/buildkitd.default.toml, DOCKER_CONFIG defaulting to ~/.docker;
    # the actions-runner image's user is `runner` with HOME /home/runner.
    env = {e["name"]: e.get("value") for e in runner["env"]}
    assert "DOCKER_CONFIG" not in env and "BUILDX_CONFIG" not in env
    mount = mounts(runner)["/home/runner/.docker/buildx/buildkitd.default.toml"]
    assert mount["subPath"] == "buildkitd.toml"
    assert volumes[mount["name"]]["configMap"]["name"] == client["metadata"]["name"]
    assert "buildkitd.toml" in client["data"]
    # buildx writes its state next to it: the directory must be a writable volume.
    state = mounts(runner)["/home/runner/.docker/buildx"]
    assert "emptyDir" in volumes[state["name"]] and not state.get("readOnly")
    # The ghcr.io hosts.toml the dind sidecar mounts exists in the same ConfigMap.
    (dind,) = spec["initContainers"]
    certs = mounts(dind)["/etc/docker/certs.d/ghcr.io/hosts.toml"]
    assert certs["subPath"] in client["data"]
    assert volumes[certs["name"]]["configMap"]["name"] == client["metadata"]["name"]


def test_containerd_example_hosts_files(arc_regcache_objects):
    configs = {mirror_config(arc_regcache_objects, n)["upstreams"][0]["name"]:
               mirror_config(arc_regcache_objects, n)["upstreams"][0]["url"]
               for n in ("regcache-dockerhub", "regcache-ghcr")}
    for registry, upstream_url in configs.items():
        hosts = tomllib.loads((ARC / "containerd" / registry / "hosts.toml").read_text())
        assert hosts["server"] == upstream_url
        ((url, host),) = hosts["host"].items()
        assert url.startswith("http://") and url.endswith(":5000")
        assert host == {"capabilities": ["pull", "resolve"]}  # never pushes to the cache


@pytest.mark.skipif(not os.environ.get("ARC_CHART_DIR"),
                    reason="ARC_CHART_DIR not set (ARC's gha-runner-scale-set chart can't be committed here)")
def test_arc_chart_renders_example():
    import jsonschema
    arc = Path(os.environ["ARC_CHART_DIR"])
    objects = render([ARC / "runner-scale-set-values.yaml"], release="arc-runner-set",
                     namespace="arc-runners", chart=arc / "gha-runner-scale-set")
    (ars,) = find(objects, "AutoscalingRunnerSet")
    crd = yaml.safe_load((arc / "gha-runner-scale-set-controller" / "crds" /
                          "actions.github.com_autoscalingrunnersets.yaml").read_text())
    jsonschema.validate(ars, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for obj in objects:
        if obj["kind"] != "AutoscalingRunnerSet":
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    spec = ars["spec"]["template"]["spec"]
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r"}, "spec": spec},
                                 KUBE_VERSION, strict=True)
    (dind,) = spec["initContainers"]
    assert "--registry-mirror=http://regcache-dockerhub.regcache.svc.cluster.local:5000" in dind["args"]
    runner = spec["containers"][0]
    assert "/home/runner/.docker/buildx/buildkitd.default.toml" in mounts(runner)
    assert [e["name"] for e in runner["env"]].count("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER") == 1
    assert {v["name"] for v in spec["volumes"]} == {"work", "dind-sock", "buildx", "regcache-client"}
