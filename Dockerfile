# regcache image: a venv built from the wheel, on the official Python slim image.
#   docker build -t regcache .
#   docker run -p 5000:5000 -v regcache-data:/var/lib/registry regcache
# Runs as uid 10001 and works with a read-only root filesystem: it writes only to its data
# directory (storage.root) and /tmp.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY regcache ./regcache
# The same install the tests check (tests/test_dockerfile.py): a wheel, then a fresh venv.
RUN pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/regcache \
    && /opt/regcache/bin/pip install /wheels/*.whl \
    && /opt/regcache/bin/pip uninstall --yes pip \
    && /opt/regcache/bin/python -m compileall -q /opt/regcache/lib
# The built-in config is in registry:2 format: the image behaves like `registry:2` with
# REGISTRY_PROXY_REMOTEURL=https://registry-1.docker.io, and REGISTRY_* variables work as they
# do there, so an existing registry:2 deployment can swap the image first (docs/deploy.md).
# Mount a regcache config over it (the Helm chart does) to use every regcache setting.
RUN mkdir -p /out/etc/regcache \
    && printf '%s\n' 'version: 0.1' 'storage:' '  filesystem:' '    rootdirectory: /var/lib/registry' \
       'http:' '  addr: :5000' 'proxy:' '  remoteurl: https://registry-1.docker.io' \
       > /out/etc/regcache/config.yaml

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="regcache" \
      org.opencontainers.image.description="Pull-through cache for container registries (Docker Hub, ghcr.io)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric ids so Kubernetes can check runAsNonRoot; the chart uses the same ones.
RUN groupadd --system --gid 10001 regcache \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin regcache \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/registry /var/lib/regcache
COPY --from=build /opt/regcache /opt/regcache
COPY --from=build /out/etc/regcache/config.yaml /etc/regcache/config.yaml
ENV PATH=/opt/regcache/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REGCACHE_CONFIG=/etc/regcache/config.yaml
USER 10001:10001
WORKDIR /var/lib/regcache
EXPOSE 5000
ENTRYPOINT ["regcache"]
CMD ["serve"]
