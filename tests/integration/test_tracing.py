"""OpenTelemetry traces of a task's life across the coordinator (in this process, spans kept in
memory) and real agent processes (spans written by OTEL_TRACES_EXPORTER=console as JSON lines to
their stderr): one trace per task, submit -> dispatch -> run -> result -> stored, each span the
child of the one before, and every span ended whatever became of the task (completed, failed,
cancelled, its worker lost).

Also: with tracing off, or the extra missing, neither side imports opentelemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dtf_agent import protocol as p
from dtf_agent import tracing
from dtf_gui.coordinator import server as server_module
from dtf_gui.coordinator.api import ApiError
from dtf_gui.coordinator.config import ephemeral_settings
from dtf_gui.coordinator.records import TaskRecord
from dtf_gui.coordinator.server import Coordinator
from tests.helpers import FakeAgent, ProcessTracker, dtf_command, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The coordinator's spans, kept in memory (tracing.install: the process's own provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.reset()
        provider.shutdown()


def start_agent(procs: ProcessTracker, coord: Coordinator, name: str, slots: int = 2) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(PYTHONUNBUFFERED="1", OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME=f"agent-{name}")
    return procs.start(name, dtf_command("dtf-agent") + ["--coordinator", coord.endpoint("agents"), "--worker-id",
                                                          name, "--slots", str(slots)], env)


def agent_spans(procs: ProcessTracker, name: str) -> list[dict[str, Any]]:
    """The spans an agent wrote (one JSON object a line among its log lines)."""
    out = []
    for line in (procs.log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith('{"name": "dtf.'):
            out.append(json.loads(line))
    return out


def hexid(n: int, width: int) -> str:
    return f"0x{n:0{width}x}"


def as_dict(s: ReadableSpan) -> dict[str, Any]:
    """A coordinator span in the console exporter's shape, to compare the two sides alike."""
    ctx = s.get_span_context()
    assert ctx is not None
    return {"name": s.name, "context": {"trace_id": hexid(ctx.trace_id, 32), "span_id": hexid(ctx.span_id, 16)},
            "parent_id": hexid(s.parent.span_id, 16) if s.parent is not None else None,
            "status": {"status_code": s.status.status_code.name, "description": s.status.description},
            "attributes": dict(s.attributes or {}), "ended": s.end_time is not None}


def chain(all_spans: list[dict[str, Any]], task_id: str) -> dict[str, list[dict[str, Any]]]:
    """One task's spans by name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in all_spans:
        if s["attributes"].get("dtf.task_id") == task_id:
            out.setdefault(s["name"], []).append(s)
    return out


def parent_of(child: dict[str, Any], parent: dict[str, Any]) -> bool:
    return (child["parent_id"] == parent["context"]["span_id"]
            and child["context"]["trace_id"] == parent["context"]["trace_id"])


def test_one_trace_per_task_across_coordinator_and_agent(spans: InMemorySpanExporter, procs: ProcessTracker,
                                                         coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(task_scheduler={"retry_limit": 0})
    assert c.traces is not None, "the installed provider traces"
    start_agent(procs, c, "tr-a", slots=4)
    wait_until(lambda: c.request("get_status")["workers_online"] == 1, 30, message=procs.logs)
    ok = c.request("create_task", {"command": "true"})["task_id"]
    noop = c.request("create_task", {"type": "noop"})["task_id"]
    bad = c.request("create_task", {"command": "exit 3"})["task_id"]
    slow = c.request("create_task", {"command": "sleep 30"})["task_id"]
    wait_until(lambda: c.request("get_task", {"task_id": slow})["status"] == "running", 20, message=procs.logs)
    c.request("cancel_task", {"task_id": slow})
    done = c.request("wait", {"task_ids": [ok, noop, bad, slow], "timeout": 30})["finished"]
    assert done == {ok: "completed", noop: "completed", bad: "failed", slow: "cancelled"}
    wait_until(lambda: c.traces is not None and not c.traces.dispatching and not c.traces.storing, 10)
    # Each result span ends when its ack arrives (the cancelled run's result is acknowledged, not
    # stored); the console exporter writes a span as it ends.
    wait_until(lambda: sum(s["name"] == "dtf.result" for s in agent_spans(procs, "tr-a")) == 4, 10,
               message=procs.logs)
    assert procs.stop(procs.procs[0][1]) == 0
    theirs = agent_spans(procs, "tr-a")
    ours = [as_dict(s) for s in spans.get_finished_spans()]
    everything = ours + theirs

    for tid in (ok, noop, bad):
        got = chain(everything, tid)
        assert {k: len(v) for k, v in got.items()} == {"dtf.submit": 1, "dtf.dispatch": 1, "dtf.run": 1,
                                                       "dtf.result": 1, "dtf.stored": 1}, (tid, got)
        submit, dispatch, run = got["dtf.submit"][0], got["dtf.dispatch"][0], got["dtf.run"][0]
        result, stored = got["dtf.result"][0], got["dtf.stored"][0]
        assert submit["parent_id"] is None, "the submission starts the task's trace"
        assert parent_of(dispatch, submit) and parent_of(run, dispatch) and parent_of(result, run)
        assert parent_of(stored, result), "stored hangs from the agent's result span"
        assert len({s["context"]["trace_id"] for s in got_all(got)}) == 1
        assert run["resource"]["attributes"]["service.name"] == "agent-tr-a"
        assert result["attributes"]["dtf.acknowledged"] is True
    assert chain(everything, bad)["dtf.run"][0]["status"]["status_code"] == "ERROR"
    assert chain(everything, ok)["dtf.run"][0]["status"]["status_code"] == "UNSET"
    assert chain(everything, ok)["dtf.run"][0]["attributes"]["dtf.exit_code"] == 0

    cancelled = chain(everything, slow)
    assert set(cancelled) == {"dtf.submit", "dtf.dispatch", "dtf.run", "dtf.result"}, "a result not stored"
    assert parent_of(cancelled["dtf.run"][0], cancelled["dtf.dispatch"][0])
    assert cancelled["dtf.run"][0]["status"]["status_code"] == "ERROR"
    assert "cancel" in cancelled["dtf.run"][0]["status"]["description"]
    # Every coordinator span ended (the in-memory exporter only sees ended ones: compare counts).
    assert all(s["ended"] for s in ours)
    assert len([s for s in ours if s["name"] == "dtf.submit"]) == 4


def got_all(got: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [s for v in got.values() for s in v]


def test_a_lost_worker_leaves_no_open_span_and_the_retry_joins_the_trace(
        spans: InMemorySpanExporter, procs: ProcessTracker, coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator(health_monitor={"heartbeat_interval": 0.5, "heartbeat_timeout": 2.0})
    doomed = start_agent(procs, c, "tr-doomed", slots=1)
    wait_until(lambda: c.request("get_status")["workers_online"] == 1, 30, message=procs.logs)
    tid = c.request("create_task", {"command": "sleep 2"})["task_id"]
    wait_until(lambda: c.request("get_task", {"task_id": tid})["status"] == "running", 20, message=procs.logs)
    doomed.kill()  # SIGKILL: its spans die with it; the coordinator's must not stay open
    doomed.wait(10)
    wait_until(lambda: c.request("get_task", {"task_id": tid})["status"] == "pending", 20)
    start_agent(procs, c, "tr-heir", slots=1)
    assert c.request("wait", {"task_ids": [tid], "timeout": 40})["finished"] == {tid: "completed"}
    wait_until(lambda: c.traces is not None and not c.traces.dispatching and not c.traces.storing, 10)
    assert procs.stop(procs.procs[1][1]) == 0
    got = chain([as_dict(s) for s in spans.get_finished_spans()] + agent_spans(procs, "tr-heir"), tid)
    submit = got["dtf.submit"][0]
    dispatches = sorted(got["dtf.dispatch"], key=lambda s: s["attributes"]["dtf.attempt"])
    assert [d["attributes"]["dtf.worker_id"] for d in dispatches] == ["tr-doomed", "tr-heir"]
    assert all(parent_of(d, submit) for d in dispatches), "every attempt hangs from the submission"
    (run,) = got["dtf.run"]
    assert parent_of(run, dispatches[1]) and parent_of(got["dtf.result"][0], run)
    assert parent_of(got["dtf.stored"][0], got["dtf.result"][0])


def test_a_restarted_coordinator_continues_the_tasks_trace(spans: InMemorySpanExporter, tmp_path: Path) -> None:
    """The submit span's context is kept in the task's row (its metadata): a recovered task's
    next dispatch span hangs from it."""
    settings = ephemeral_settings(tmp_path / "restart.sqlite")
    first = Coordinator(settings).start()
    try:
        tid = first.request("create_task", {"command": "true", "requirements": {"tags": ["nobody"]}})["task_id"]
        kept = first.request("get_task", {"task_id": tid})["metadata"]["trace"]
    finally:
        first.stop()
    (submit,) = [as_dict(s) for s in spans.get_finished_spans() if s.name == "dtf.submit"]
    assert kept["traceparent"].split("-")[1] == submit["context"]["trace_id"][2:]
    second = Coordinator(settings).start()
    try:
        fake = FakeAgent(second.endpoint("agents"), "tagged")
        try:
            fake.register_until_welcomed(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="tagged",
                                                    hostname="h", slots=1, tags=["nobody"]))
            assign = fake.recv(p.Assign)
        finally:
            fake.close()
    finally:
        second.stop()
    (spec,) = assign.tasks
    assert spec.task_id == tid and spec.trace["traceparent"].split("-")[1] == kept["traceparent"].split("-")[1]
    dispatch = [as_dict(s) for s in spans.get_finished_spans() if s.name == "dtf.dispatch"]
    assert len(dispatch) == 1 and parent_of(dispatch[0], submit)


def test_a_client_can_hang_the_task_from_a_trace_of_its_own(spans: InMemorySpanExporter,
                                                             coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tid = c.request("create_task", {"type": "noop", "metadata": {"trace": {"traceparent": theirs}},
                                    "requirements": {"tags": ["nobody"]}})["task_id"]
    (submit,) = [as_dict(s) for s in spans.get_finished_spans() if s.name == "dtf.submit"]
    assert submit["context"]["trace_id"] == "0x0af7651916cd43dd8448eb211c80319c"
    assert submit["parent_id"] == "0xb7ad6b7169203331"
    assert submit["attributes"]["dtf.task_id"] == tid


def test_a_result_cannot_move_its_stored_span_out_of_the_tasks_trace(
        spans: InMemorySpanExporter, coordinator: Callable[..., Coordinator]) -> None:
    """The trace context of a result is the agent's word: its stored span joins the agent's
    result span only within the task's own trace, and keeps the sampling of the task's trace.
    Anything else hangs from the task's own context, with a link to what the agent named."""
    c = coordinator(task_scheduler={"retry_limit": 0})
    fake = FakeAgent(c.endpoint("agents"), "liar")
    try:
        fake.register_until_welcomed(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="liar",
                                                hostname="h", slots=3))
        foreign, unsampled, honest = (c.request("create_task", {"type": "noop"})["task_id"] for _ in range(3))
        specs: dict[str, p.RunSpec] = {}
        while len(specs) < 3:
            specs.update((spec.task_id, spec) for spec in fake.recv(p.Assign).tasks)
        own = {tid: spec.trace["traceparent"].split("-")[1] for tid, spec in specs.items()}
        elsewhere = "0af7651916cd43dd8448eb211c80319c"
        assert elsewhere not in own.values()
        claimed = {foreign: f"00-{elsewhere}-b7ad6b7169203331-01",
                   unsampled: f"00-{own[unsampled]}-00f067aa0ba902b7-00",  # "do not record the stored span"
                   honest: f"00-{own[honest]}-53995c3f42cd8ad8-01"}
        fake.send(p.Results(results=[
            p.ResultRecord(result_id=f"r-{tid}", task_id=tid, status="success", attempt=specs[tid].attempt,
                           trace={"traceparent": claimed[tid]}) for tid in (foreign, unsampled, honest)]))
        fake.recv(p.ResultAck)
    finally:
        fake.close()
    assert c.request("wait", {"task_ids": [foreign, unsampled, honest], "timeout": 20})["finished"] == dict.fromkeys(
        (foreign, unsampled, honest), "completed")
    wait_until(lambda: c.traces is not None and not c.traces.storing, 10)
    finished = spans.get_finished_spans()
    ours = [as_dict(s) for s in finished]
    stored = {tid: chain(ours, tid)["dtf.stored"] for tid in (foreign, unsampled, honest)}
    assert all(len(v) == 1 for v in stored.values()), "every stored span recorded, the unsampled one's too"
    for tid in (foreign, unsampled, honest):
        assert stored[tid][0]["context"]["trace_id"] == f"0x{own[tid]}", f"{tid} left its trace"
    submit = chain(ours, foreign)["dtf.submit"][0]
    assert parent_of(stored[foreign][0], submit), "a foreign trace: hung from the task's own context"
    (raw,) = [s for s in finished if s.name == "dtf.stored" and (s.attributes or {}).get("dtf.task_id") == foreign]
    assert [(hexid(link.context.trace_id, 32), hexid(link.context.span_id, 16)) for link in raw.links] == [
        (f"0x{elsewhere}", "0xb7ad6b7169203331")], "the context the agent named is kept as a link"
    assert stored[unsampled][0]["parent_id"] == "0x00f067aa0ba902b7"
    assert stored[honest][0]["parent_id"] == "0x53995c3f42cd8ad8"


def test_a_submission_that_raises_leaves_no_submit_span_open(
        spans: InMemorySpanExporter, coordinator: Callable[..., Coordinator],
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = coordinator()

    def submit(tasks: Any) -> dict[str, str]:
        raise RuntimeError("the scheduler broke")

    monkeypatch.setattr(c, "submit", submit)  # what the API calls (its commands are the coordinator)
    for op, args in (("create_task", {"type": "noop"}), ("create_tasks", {"tasks": [{"type": "noop"}] * 2})):
        with pytest.raises(ApiError):
            c.request(op, args)
    ended = [as_dict(s) for s in spans.get_finished_spans() if s.name == "dtf.submit"]
    assert len(ended) == 3, "every submit span ended (the in-memory exporter sees ended ones only)"
    for span in ended:
        assert span["status"]["status_code"] == "ERROR"
        assert "the scheduler broke" in span["status"]["description"]


def test_sending_an_assignment_builds_nothing_for_tracing_while_it_is_off(
        coordinator: Callable[..., Coordinator], monkeypatch: pytest.MonkeyPatch) -> None:
    """_send runs for every batch of assignments: with tracing off it makes nothing for it (the
    set of workers an assignment reached is for the dispatch spans)."""
    c = coordinator()
    assert c.traces is None
    made: list[object] = []

    class CountedSet(set[Any]):
        def __init__(self, *args: Any) -> None:
            made.append(self)
            super().__init__(*args)

    def send() -> None:  # on the loop thread, where _send runs
        out = server_module._Outgoing(assigns={"gone": [p.RunSpec(task_id="t1")]})
        with monkeypatch.context() as m:
            m.setattr(server_module, "set", CountedSet, raising=False)
            c._send(out)
        done.set_result(None)

    done: Future[None] = Future()
    c.inbox.put(send)
    done.result(10)
    assert made == []


def test_an_assignment_that_finds_its_worker_gone_ends_its_dispatch_span_saying_so(
        spans: InMemorySpanExporter, coordinator: Callable[..., Coordinator]) -> None:
    c = coordinator()
    fake = FakeAgent(c.endpoint("agents"), "here")
    try:
        fake.register_until_welcomed(p.Register(protocol_version=p.PROTOCOL_VERSION, worker_id="here",
                                                hostname="h", slots=1))

        def send() -> None:  # on the loop thread, where _send runs
            assert c.traces is not None
            # _send reads a task's id and worker (and stamps when it left): a stand-in does.
            tasks = [types.SimpleNamespace(task_id=f"t-{w}", worker_id=w) for w in ("here", "gone")]
            for t in tasks:
                c.traces.dispatching[t.task_id] = tracing.start_span(c.traces.tracer, "dtf.dispatch",
                                                                     attributes={"dtf.task_id": t.task_id})
            c._send(server_module._Outgoing(assigns={t.worker_id: [p.RunSpec(task_id=t.task_id)] for t in tasks},
                                            assigned=cast(list[TaskRecord], tasks)))
            done.set_result(None)

        done: Future[None] = Future()
        c.inbox.put(send)
        done.result(10)
        assert [s.task_id for s in fake.recv(p.Assign).tasks] == ["t-here"]
    finally:
        fake.close()
    ended = {s["attributes"]["dtf.task_id"]: s["status"] for s in map(as_dict, spans.get_finished_spans())}
    assert ended["t-here"]["status_code"] == "UNSET"
    assert ended["t-gone"]["status_code"] == "ERROR" and "worker was gone" in ended["t-gone"]["description"]
    assert c.traces is not None and not c.traces.dispatching


# ---------------------------------------------------------------------------------------- off


_PROBE = """
import sys
from dtf_agent import tracing
import dtf_agent.agent, dtf_agent.cli, dtf_gui.coordinator.server
assert tracing.setup("probe") is None, "tracing should be off"
print(sorted({m for m, mod in sys.modules.items() if m.startswith("opentelemetry") and mod is not None}))
"""


@pytest.mark.parametrize("env, blocked", [({}, False), ({"OTEL_TRACES_EXPORTER": "console"}, True)],
                         ids=["not-configured", "configured-without-the-extra"])
def test_off_imports_no_opentelemetry(env: dict[str, str], blocked: bool) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Without the extra: opentelemetry cannot be imported (None in sys.modules makes import fail).
    code = ("import sys; sys.modules['opentelemetry'] = None\n" if blocked else "") + _PROBE
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    if blocked:
        assert "pip install 'dtf[otel]'" in out.stderr and "Tracing is off" in out.stderr


def test_wanted_follows_the_standard_variables() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
