"""The coordinator loop's part of a task's trace (dtf[otel], see dtf_agent/tracing.py).

The loop owns the spans it keeps open between its turns: each attempt's ``dtf.dispatch`` until
the assignment leaves (or its worker is found gone), and each result's ``dtf.stored`` until the
batch holding it commits. Loop thread only, like the state the spans describe. The coordinator
holds one of these only while tracing is on: off, every call site is one test of None.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dtf_agent import protocol as p
from dtf_agent import tracing
from dtf_gui.coordinator.records import TaskRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer


class LoopTraces:
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        # The dispatch span of each task whose assignment has not left yet.
        self.dispatching: dict[str, Span] = {}
        # (batch number, stored span) waiting for that batch's commit, in batch order.
        self.storing: collections.deque[tuple[int, Span]] = collections.deque()

    def dispatched(self, task: TaskRecord, worker_id: str, attempt: int) -> dict[str, str]:
        """The attempt's dispatch span (a child of the task's submit span, whose context its metadata
        keeps); returns its context, which the assignment carries to the agent's run span."""
        old = self.dispatching.pop(task.task_id, None)
        if old is not None:
            tracing.end_span(old, "dispatched again before the assignment left")
        span = tracing.start_span(self.tracer, "dtf.dispatch", (task.metadata or {}).get("trace"), kind="producer",
                                  attributes={"dtf.task_id": task.task_id, "dtf.worker_id": worker_id,
                                              "dtf.attempt": attempt})
        self.dispatching[task.task_id] = span
        return tracing.context_of(span)

    def sent(self, workers: Iterable[str], tasks: Iterable[TaskRecord], reached: Callable[[str], bool]) -> None:
        """Each assignment that left ends its dispatch span; one whose worker was gone, with why.
        ``reached`` says of each worker the assignments were for whether they went out (as the
        loop's send decided it, nothing having changed since), so that the send builds nothing for
        tracing while it is off."""
        sent_to = {wid for wid in workers if reached(wid)}
        for task in tasks:
            span = self.dispatching.pop(task.task_id, None)
            if span is not None:
                tracing.end_span(span, None if task.worker_id in sent_to else "the worker was gone before the "
                                 "assignment left; the task went back to the queue")

    def stored(self, rec: p.ResultRecord, task: TaskRecord, worker_id: str, batch: int) -> None:
        """The stored span: the agent's result span's child when that span is in the task's own
        trace (else, or for an agent that sends none, the child of the task's own context, linked
        to what the agent named), ended once ``batch`` commits (:meth:`committed`)."""
        parent, links = tracing.reported_parent((task.metadata or {}).get("trace"), rec.trace)
        span = tracing.start_span(self.tracer, "dtf.stored", parent, kind="consumer", links=links, attributes={
            "dtf.task_id": rec.task_id, "dtf.result_id": rec.result_id, "dtf.worker_id": worker_id,
            "dtf.attempt": rec.attempt, "dtf.status": rec.status})
        self.storing.append((batch, span))

    def committed(self, upto: int) -> None:
        """Batches up to ``upto`` are committed: their stored spans end."""
        spans = self.storing
        while spans and spans[0][0] <= upto:
            tracing.end_span(spans.popleft()[1])

    def close(self, committed: int) -> None:
        """At stop: every span still open ends, saying why."""
        self.committed(committed)
        for span in self.dispatching.values():
            tracing.end_span(span, "the coordinator stopped before the assignment left")
        self.dispatching.clear()
        while self.storing:
            tracing.end_span(self.storing.popleft()[1], "the coordinator stopped before the result was "
                             "committed (the agent sends it again)")
        tracing.flush()
