# One image for both parts of discoverd on Kubernetes (charts/discoverd):
#   - the operator runs it as the non-root user "discoverd" (uid 10001), the default here;
#   - the agent DaemonSet runs it as root with hostPID and a few named
#     capabilities (not privileged), because it enters a host process's
#     namespaces with nsenter (util-linux) to install and run services on the node.
# Build: make image  (hack/image.sh; BASE_IMAGE=local makes the base from Debian
# packages when no image registry is reachable). Plain Docker works too, without
# BuildKit-only syntax:  docker build --network host -t discoverd:dev .
#
# The base: any Debian bookworm image with python3 (>= 3.11) and its venv
# module; the default is the public Python slim image.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with discoverd and its pinned dependencies -----------------
FROM ${BASE_IMAGE} AS build
# Wheel and file timestamps from the source's last commit (hack/image.sh passes it).
ARG SOURCE_DATE_EPOCH=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
RUN python3 -m venv /opt/discoverd
WORKDIR /src
# Exact versions of every dependency and of the build backend (setuptools):
# hack/image-constraints.txt, regenerated with `hack/image.sh constraints`.
# build-ca.pe[m]: present only when hack/image.sh found a TLS-inspecting
# proxy's CA bundle on the build machine; used by pip here, never shipped.
COPY hack/image-constraints.txt build-ca.pe[m] ./
ENV PIP_CONSTRAINT=/src/image-constraints.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
    && /opt/discoverd/bin/pip install --no-compile . \
    && /opt/discoverd/bin/discoverd --version

# --- runtime ----------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="discoverd" \
      org.opencontainers.image.description="discoverd operator and node agent" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/discoverd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# tini: PID 1 that reaps zombies and passes signals on (`-g`: to the agent's
# process group; `-s`: still a subreaper when the pod shares the host's pid
# namespace and tini is not PID 1). nsenter comes with util-linux.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini util-linux \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 discoverd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin discoverd
COPY --from=build /opt/discoverd /opt/discoverd
RUN discoverd --version && command -v nsenter && tini --version
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "-s", "-g", "--", "discoverd"]
CMD ["--help"]
