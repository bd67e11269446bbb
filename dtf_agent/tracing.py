"""OpenTelemetry traces of a task's life, for the coordinator and the agent (the ``dtf[otel]`` extra).

One task is one trace: ``dtf.submit`` (coordinator, the client's request) -> ``dtf.dispatch``
(coordinator, one per attempt, until the assignment leaves) -> ``dtf.run`` (agent, the task
running) -> ``dtf.result`` (agent, the result journalled and sent until the coordinator
acknowledges it) -> ``dtf.stored`` (coordinator, the result received until the transaction holding
it commits). Each is the child of the one before; the W3C trace context (``traceparent``,
``tracestate``) travels in the messages between the two processes (RunSpec.trace,
ResultRecord.trace) and stays with the task in the coordinator (its metadata, so a restart
continues the trace).

On and off, as operators configure any OpenTelemetry program: tracing is on when the SDK is
installed and OTEL_TRACES_EXPORTER (otlp, console; "none" is off) or OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_SDK_DISABLED=true switches it off; the SDK
reads the rest (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, the OTLP
endpoint, headers and protocol). ``console`` writes each span as one JSON line to stderr (for
debugging, and for tests of a process whose spans cannot be read otherwise).

Off, it costs nothing: nothing here imports opentelemetry until :func:`setup` finds tracing
configured, and the callers keep the tracer :func:`setup` returns (None when off) and test it
before any span work. Both the agent and the coordinator call :func:`setup` when they start;
a program that embeds them (the window) may call it first, or :func:`install` a provider of its own.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dtf_agent import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, Tracer

log = logging.getLogger(__name__)

__all__ = ["MAX_TRACESTATE", "context_of", "end_span", "flush", "install", "parent_from", "reported_parent",
           "reset", "setup", "start_span", "wanted"]

# What the wire carries of a trace context (protocol.TraceContext's bounds): a longer tracestate
# is dropped, the trace goes on without it.
MAX_TRACESTATE = 512
_KINDS = ("internal", "server", "client", "producer", "consumer")

_lock = threading.Lock()
_provider: TracerProvider | None = None
_looked = False  # setup() read the environment already (once a process)


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (whether or not the SDK is installed)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()}
    if exporters:
        return exporters != {"none"}
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())


def setup(service_name: str) -> Tracer | None:
    """The tracer for DTF's spans, or None when tracing is off. The first call in a process reads
    the environment and makes the provider; later ones (the coordinator and an agent in one
    process, a restart) share it. ``service_name`` is the default of OTEL_SERVICE_NAME."""
    global _provider, _looked
    with _lock:
        if _provider is None and not _looked:
            _looked = True
            if wanted():
                _provider = _make_provider(service_name)
        return _provider.get_tracer("dtf", __version__) if _provider is not None else None


def install(provider: TracerProvider) -> None:
    """Send DTF's spans to ``provider`` (a program's own, a test's in-memory one) from now on."""
    global _provider, _looked
    with _lock:
        _provider, _looked = provider, True


def reset() -> None:
    """Forget the provider (tests): the next :func:`setup` reads the environment again."""
    global _provider, _looked
    with _lock:
        _provider, _looked = None, False


def flush(timeout_s: float = 5.0) -> None:
    """Export the spans ended so far (a coordinator or agent stopping: the process may go on, or
    end before the batch's next export)."""
    provider = _provider
    if provider is not None:
        try:
            provider.force_flush(int(timeout_s * 1000))
        except Exception:  # an exporter's trouble must not stop a stop
            log.warning("tracing: exporting the last spans failed", exc_info=True)


def _make_provider(service_name: str) -> TracerProvider | None:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        log.warning("tracing: OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is "
                    "not installed (%s): pip install 'dtf[otel]'. Tracing is off.", exc)
        return None
    attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
    if not os.environ.get("OTEL_SERVICE_NAME", "").strip():
        attributes[SERVICE_NAME] = service_name  # given here, it would override the operator's choice
    # The sampler comes from OTEL_TRACES_SAMPLER (default: every trace, children follow the parent).
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [e.strip().lower() for e in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()]
    added = 0
    for name in names or ["otlp"]:
        processor = _processor(name)
        if processor is not None:
            provider.add_span_processor(processor)
            added += 1
    if not added:
        provider.shutdown()
        return None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # The process's global one too, unless the program set its own: other instrumentation
        # (an HTTP client in a task runner) joins the same traces.
        trace.set_tracer_provider(provider)
    log.info("tracing: spans go to %s", ", ".join(names))
    return provider


def _processor(name: str) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if name == "none":
        return None
    if name == "console":
        # One JSON object a line, on stderr (stdout may be a task runner's or a CLI's output).
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr,
                                                       formatter=lambda s: s.to_json(indent=None) + "\n"))
    if name == "otlp":
        protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
        flavour = "grpc" if protocol == "grpc" else "http"
        try:
            # By name: either package may be missing (dtf[otel] brings the http one).
            exporter = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{flavour}.trace_exporter")
        except ImportError as exc:
            log.warning("tracing: the OTLP exporter (%s) is not installed (%s): pip install 'dtf[otel]' (or "
                        "opentelemetry-exporter-otlp-proto-%s); no spans are exported over OTLP", protocol, exc,
                        flavour)
            return None
        return BatchSpanProcessor(exporter.OTLPSpanExporter())
    log.warning("tracing: OTEL_TRACES_EXPORTER names %r, which DTF does not know (otlp, console, none); ignored",
                name)
    return None


# -- spans (callers hold a tracer from setup(), so opentelemetry is imported) ----------------------


def parent_from(carrier: object) -> Context | None:
    """The context of a W3C trace-context carrier ({"traceparent": ..., "tracestate": ...}) as it
    came from the network or a task's metadata; None when it is not one (nothing to join)."""
    if not isinstance(carrier, Mapping) or not isinstance(carrier.get("traceparent"), str):
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    clean = {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate") and isinstance(v, str)}
    ctx = TraceContextTextMapPropagator().extract(clean)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def reported_parent(own: object, reported: object) -> tuple[Context | None, list[Link]]:
    """(parent, links) of a span that follows what a peer reported (a result's trace context, the
    agent's word) in a task whose own trace context is ``own`` (the carrier in its metadata).

    The peer's context counts only within the task's own trace, and only for its span id: the
    span keeps the trace flags and state of the task's context, so a peer can neither move the
    span into another trace nor unsample it. A context of another trace hangs the span from
    ``own`` and is kept as a link."""
    from opentelemetry import trace

    mine = parent_from(own)
    theirs = parent_from(reported)
    if theirs is None:
        return mine, []
    their_sc = trace.get_current_span(theirs).get_span_context()
    if mine is not None:
        my_sc = trace.get_current_span(mine).get_span_context()
        if their_sc.trace_id == my_sc.trace_id:
            joined = trace.SpanContext(my_sc.trace_id, their_sc.span_id, is_remote=True,
                                       trace_flags=my_sc.trace_flags, trace_state=my_sc.trace_state)
            return trace.set_span_in_context(trace.NonRecordingSpan(joined)), []
    return mine, [trace.Link(their_sc)]


def start_span(tracer: Tracer, name: str, parent: Span | Context | Mapping[str, str] | None = None, *,
               kind: str = "internal", attributes: Mapping[str, Any] | None = None,
               links: Sequence[Link] = ()) -> Span:
    """A span (not made current: DTF's spans outlive the call that starts them, and are ended
    explicitly by :func:`end_span`). ``parent``: a span, a context, or a carrier as
    :func:`parent_from` takes; None starts a trace."""
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, set_span_in_context

    if isinstance(parent, Span):
        ctx: Context | None = set_span_in_context(parent)
    elif parent is None or isinstance(parent, Context):  # a Context is a Mapping too: first
        ctx = parent
    else:
        ctx = parent_from(parent)
    span_kind = SpanKind[kind.upper()] if kind in _KINDS else SpanKind.INTERNAL
    return tracer.start_span(name, context=ctx, kind=span_kind, links=links or None,
                             attributes={k: v for k, v in (attributes or {}).items() if v is not None})


def end_span(span: Span, error: str | None = None, attributes: Mapping[str, Any] | None = None) -> None:
    """End a span; with ``error``, marked failed with that description."""
    if attributes:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()


def context_of(span: Span) -> dict[str, str]:
    """The W3C carrier of ``span``'s context: what a child in another process starts from."""
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    if len(carrier.get("tracestate", "")) > MAX_TRACESTATE:
        del carrier["tracestate"]
    return carrier
