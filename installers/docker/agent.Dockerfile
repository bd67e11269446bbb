# The DTF agent (dtf-agent): runs tasks for a coordinator. Build from the repository root:
#   docker build -f installers/docker/agent.Dockerfile -t dtf-agent:0.1.0 .
# Run (see installers/docker/README.md for the token):
#   docker run -d --name dtf-agent-1 --hostname dtf-agent-1 --network dtf -v dtf-agent-1:/var/lib/dtf \
#     -e DTF_COORDINATOR=tcp://dtf-coordinator:8081 -e DTF_JOIN_TOKEN="$TOKEN" dtf-agent:0.1.0
# Configuration is by environment (agent-entrypoint.sh lists the variables); state (the agent's key,
# the pinned coordinator key, unsent results, task work directories) lives in the volume /var/lib/dtf.
# The test tools your tasks need go into an image of your own: FROM dtf-agent:0.1.0, USER root,
# install them, USER 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: the project and its dependencies into a virtual environment --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dtf_agent ./dtf_agent
COPY dtf_gui ./dtf_gui
# The base install only (no extras): what a test machine needs, no numpy, scipy or Qt.
RUN python -m venv /opt/dtf \
    && /opt/dtf/bin/pip install --no-cache-dir /src \
    && /opt/dtf/bin/python -m dtf_agent.selfcheck

# -- runtime: the environment and nothing of the build -------------------------------------------
FROM ${PYTHON_IMAGE}
# tini is PID 1: it forwards SIGTERM to the agent and reaps the orphans of task trees (a task's
# daemonised grandchild would otherwise stay a zombie of an agent that never waits for it). The
# base image's tag fixes the Debian release tini comes from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dtf \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dtf --shell /usr/sbin/nologin dtf \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/dtf
COPY --from=build /opt/dtf /opt/dtf
COPY installers/docker/worker.yaml /etc/dtf/worker.yaml
COPY --chmod=0755 installers/docker/agent-entrypoint.sh /usr/local/bin/dtf-agent-entrypoint
ENV PATH=/opt/dtf/bin:$PATH \
    DTF_HOME=/var/lib/dtf \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/dtf"]
WORKDIR /var/lib/dtf
# A fixed, numeric, non-root user: Kubernetes' runAsNonRoot can verify it, volumes can be chowned to it.
USER 10001:10001
# Nothing to EXPOSE: an agent only connects out, to the coordinator's agent port.
STOPSIGNAL SIGTERM
# Healthy while connected to the coordinator's agent port (dtf_agent/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "dtf_agent.healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dtf-agent-entrypoint"]
CMD []
