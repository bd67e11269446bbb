# The DTF coordinator without a window (`dtf serve`). Build from the repository root:
#   docker build -f installers/docker/coordinator.Dockerfile -t dtf-coordinator:0.1.0 .
# Run:
#   docker run -d --name dtf-coordinator --network dtf -v dtf-coordinator:/var/lib/dtf dtf-coordinator:0.1.0
# Configuration is by environment (coordinator.yaml: DTF_PORT, DTF_AGENT_PORT, DTF_EVENTS_PORT, ...);
# state (the database, keys, logs, backups) lives in the volume /var/lib/dtf. `dtf` commands run in
# the container are this home's admin: docker exec dtf-coordinator dtf token create

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the project with the [server] extra into a virtual environment ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dtf_agent ./dtf_agent
COPY dtf_gui ./dtf_gui
# numpy's and scipy's own test suites are a fifth of the environment and never run here.
RUN python -m venv /opt/dtf \
    && /opt/dtf/bin/pip install --no-cache-dir '/src[server]' \
    && /opt/dtf/bin/python -m dtf_gui.coordinator.selfcheck \
    && find /opt/dtf/lib/python3.11/site-packages/numpy /opt/dtf/lib/python3.11/site-packages/scipy \
        -depth -type d -name tests -exec rm -rf {} +

# -- runtime: the environment and nothing of the build -------------------------------------------
FROM ${PYTHON_IMAGE}
# tini is PID 1: it forwards SIGTERM to `dtf serve` (which then flushes and closes the database)
# and reaps what a processor or alert handler may leave behind. The base image's tag fixes the
# Debian release tini comes from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dtf \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dtf --shell /usr/sbin/nologin dtf \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/dtf
COPY --from=build /opt/dtf /opt/dtf
COPY installers/docker/coordinator.yaml /etc/dtf/coordinator.yaml
ENV PATH=/opt/dtf/bin:$PATH \
    DTF_HOME=/var/lib/dtf \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/dtf"]
WORKDIR /var/lib/dtf
# A fixed, numeric, non-root user: Kubernetes' runAsNonRoot can verify it, volumes can be chowned to it.
USER 10001:10001
# clients (dtf submit, the window's --connect), agents, live events
EXPOSE 8080 8081 8082
# dtf serve stops on SIGTERM: the loop ends, batched writes are flushed, the database is closed.
STOPSIGNAL SIGTERM
# A round trip through the coordinator's loop with this home's admin key: a hung loop fails it,
# not just a dead process.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["dtf", "status", "--timeout-s", "10"]
ENTRYPOINT ["/usr/bin/tini", "--", "dtf"]
CMD ["serve", "--config", "/etc/dtf/coordinator.yaml"]
