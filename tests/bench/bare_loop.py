"""The floor under tests/bench/dispatch.py: a bare pyzmq ROUTER loop and N bare DEALER agent
processes doing the same no-op round trips, results stored in SQLite (executemany every 250 ms).

No DTF code: it shows what this machine allows for the same shape of work, so the framework's
figures can be read as a ratio measured side by side.

  .venv/bin/python tests/bench/bare_loop.py [--tasks 100000] [--agents 4] [--window 64]

Prints one JSON object: tasks_per_s, p50_latency_us, p99_latency_us.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time

import msgspec
import zmq


def agent(endpoint: str, ident: bytes) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, ident)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    sock.send(enc.encode(["hello"]))
    while True:
        tasks = dec.decode(sock.recv())
        if tasks == ["stop"]:
            break
        sock.send(enc.encode([["r" + t, t, "success", time.time()] for t in tasks]))
    sock.close()
    ctx.term()


def run(n_tasks: int, n_agents: int, window: int) -> dict[str, float]:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    procs = [mp.Process(target=agent, args=(f"tcp://127.0.0.1:{port}", f"a{i}".encode())) for i in range(n_agents)]
    for p in procs:
        p.start()
    db_dir = tempfile.mkdtemp()
    db = sqlite3.connect(os.path.join(db_dir, "bare.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE results (result_id TEXT PRIMARY KEY, task_id TEXT, status TEXT, timestamp REAL)")
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    agents = []
    while len(agents) < n_agents:
        ident, _ = router.recv_multipart()
        agents.append(ident)
    queue = [f"t{i}" for i in range(n_tasks)]
    sent: dict[str, float] = {}
    latencies: list[float] = []
    buffer: list[list[object]] = []
    last_flush = time.monotonic()
    done = 0
    t0 = time.perf_counter()
    for ident in agents:
        batch, queue = queue[:window], queue[window:]
        now = time.perf_counter()
        sent.update((t, now) for t in batch)
        router.send_multipart([ident, enc.encode(batch)])
    while done < n_tasks:
        ident, frame = router.recv_multipart()
        held = time.perf_counter()
        results = dec.decode(frame)
        for r in results:
            latencies.append(held - sent.pop(r[1]))
        buffer.extend(results)
        done += len(results)
        batch, queue = queue[:len(results)], queue[len(results):]
        if batch:
            now = time.perf_counter()
            sent.update((t, now) for t in batch)
            router.send_multipart([ident, enc.encode(batch)])
        if time.monotonic() - last_flush > 0.25:
            db.execute("BEGIN")
            db.executemany("INSERT INTO results VALUES (?,?,?,?)", buffer)
            db.execute("COMMIT")
            buffer.clear()
            last_flush = time.monotonic()
    db.execute("BEGIN")
    db.executemany("INSERT INTO results VALUES (?,?,?,?)", buffer)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    for ident in agents:
        router.send_multipart([ident, enc.encode(["stop"])])
    for p in procs:
        p.join(10)
    router.close()
    ctx.term()
    latencies.sort()
    tail = latencies[-20_000:] if len(latencies) > 20_000 else latencies
    tail = sorted(tail)
    return {"tasks_per_s": n_tasks / elapsed, "p50_latency_us": tail[len(tail) // 2] * 1e6,
            "p99_latency_us": tail[int(len(tail) * 0.99)] * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--latency-tasks", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rates, p50s, p99s = [], [], []
    for _ in range(args.runs):
        rates.append(run(args.tasks, args.agents, args.window)["tasks_per_s"])
        lat = run(args.latency_tasks, args.agents, 1)
        p50s.append(lat["p50_latency_us"])
        p99s.append(lat["p99_latency_us"])
        print(f"bare: {rates[-1]:,.0f} tasks/s (window {args.window}); window 1 p50 {p50s[-1]:.0f} us "
              f"p99 {p99s[-1]:.0f} us", file=sys.stderr)
    print(json.dumps({"tasks_per_s": round(statistics.median(rates)), "p50_latency_us": round(statistics.median(p50s)),
                      "p99_latency_us": round(statistics.median(p99s)), "runs": args.runs, "agents": args.agents,
                      "window": args.window}))


if __name__ == "__main__":
    main()
