# syntax=docker/dockerfile:1
# One image for both parts of discoverd on Kubernetes (charts/discoverd):
#   - the operator runs it as the non-root user "discoverd" (uid 10001), the default here;
#   - the agent DaemonSet runs it as root, privileged, with hostPID, because it
#     enters the node's namespaces with nsenter (util-linux) to install and run
#     services on the node.
# Build: docker build -t discoverd:dev .     (hack/kind-e2e.sh does this)
ARG PYTHON_VERSION=3.11

# --- build: the discoverd wheel and the wheels of its dependencies ------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="discoverd" \
      org.opencontainers.image.description="discoverd operator and node agent" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# nsenter comes with util-linux (already in the base image on current Debian;
# installed explicitly so the image never silently loses it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 discoverd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin discoverd
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels discoverd \
    && discoverd --version \
    && command -v nsenter
USER 10001:10001
ENTRYPOINT ["discoverd"]
CMD ["--help"]
