"""A small benchmark for the example plan: hash a buffer with several threads.

Run by hand: python3 bench.py --size 4M --threads 2   (prints the result it would report)
Under DTF: the agent sets DTF_RESULT_FILE; the metrics written there are stored with the task's
result, with their units and which way is better, and compared with earlier runs of the plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import threading
import time

UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def size_in_bytes(text: str) -> int:
    text = text.strip().upper()
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def bench(size: int, threads: int, rounds: int) -> dict[str, float]:
    data = os.urandom(size)
    latencies: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(rounds):
            t0 = time.perf_counter()
            hashlib.sha256(data).digest()  # releases the GIL on large buffers: threads do scale
            with lock:
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "throughput_mb_s": size * threads * rounds / elapsed / 1e6,
        "latency_ms": latencies[len(latencies) // 2] * 1000,
    }


def report(metrics: dict[str, float]) -> None:
    result = {
        "metrics": metrics,
        "units": {"throughput_mb_s": "MB/s", "latency_ms": "ms"},
        "directions": {"throughput_mb_s": "higher", "latency_ms": "lower"},
    }
    path = os.environ.get("DTF_RESULT_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    print(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description="Hash a buffer with several threads; report throughput and latency.")
    ap.add_argument("--size", default="1M", help="buffer size: bytes, or with K, M or G")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "20")))
    ap.add_argument("--selftest", action="store_true", help="a quick check that hashing works here")
    ap.add_argument("--summary", action="store_true", help="print what machine this ran on")
    args = ap.parse_args()
    if args.selftest:
        expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        if hashlib.sha256(b"abc").hexdigest() != expected:
            print("sha256 gives a wrong digest on this machine", file=sys.stderr)
            return 1
        print(f"self-test passed on {platform.node()} (Python {platform.python_version()})")
        return 0
    if args.summary:
        print(f"bench finished; last step ran on {platform.node()}: {platform.platform()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
        print("compare this run with earlier ones: dtf analyze compare --by test_id")
        return 0
    report(bench(size_in_bytes(args.size), args.threads, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
