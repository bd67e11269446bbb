"""Task output at rest: write throughput, bytes on disk and read time of each storage format.

    .venv/bin/python tests/bench/logstore.py [--mib 32] [--runs 3] [--formats raw,zlib-1,...] [--dir DIR]

For each format and each kind of output (test-log text: pytest, compiler and logging lines; highly
repetitive text; random bytes), --mib MiB are appended in 64 KiB chunks to one stream of a fresh
LogStore (max_bytes big enough to keep it all), then close() (which compresses the last segment);
write MB/s counts both. Then a fresh LogStore over the same root reads the stream back in 1 MiB
slices (read MB/s; the page cache is warm, so this is the CPU cost of the format). "disk" is every
byte under the root (segments and metadata) over the bytes written.

Also measured, outside LogStore: per-chunk gzip members appended to one file (level 1 and 6), read
back whole (a read at an offset would have to inflate from the start or keep an index). And the
file-handle policy: 64 and 256 existing streams written round-robin in 4 KiB and 64 KiB chunks,
opening, appending and closing per chunk vs an LRU of 64 handles (which holds every handle of the
64, and thrashes on the 256), and the cost of a new stream.

MB = 10**6 bytes; MB/s is wall time, "MB/cpu-s" this process's CPU time (steadier on a shared
machine). Progress on stderr; last line of stdout: one JSON object, medians of --runs runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtf_gui.coordinator.logstore import _CODECS, DEFAULT_CODEC, LogStore

CHUNK = 64 * 1024
MiB = 1024 * 1024
FORMATS = ["raw", "zlib-1", "zlib-6", "gzip-1", "gzip-6", "lzma-0", "lzma-6", "gzip-1/noprobe"]


def test_log_text(n: int, seed: int = 1) -> bytes:
    """Output like a CI job's: pytest progress and failures, compiler lines, logging, tracebacks."""
    rng = random.Random(seed)
    mods = ["scheduler", "balancer", "net/socket_pool", "io/ringbuf", "agent/runner", "codec/h264_parse",
            "storage/btree", "telemetry", "crypto/sha256", "ui/plot_widget"]
    funcs = ["dispatch_order", "retry_backoff", "parse_header", "flush_on_close", "rebalance", "handshake",
             "large_payload", "timeout_expired", "unicode_names", "concurrent_writers"]
    levels = ["DEBUG", "INFO", "INFO", "INFO", "WARNING", "ERROR"]
    out: list[str] = []
    size = 0
    t = 1_715_680_000.0
    while size < n:
        r = rng.random()
        m, f = rng.choice(mods), rng.choice(funcs)
        t += rng.expovariate(20)
        if r < 0.35:
            pct = rng.randrange(101)
            outcome = rng.choices(["PASSED", "FAILED", "SKIPPED", "XFAIL"], [90, 4, 5, 1])[0]
            line = f"tests/unit/test_{m.replace('/', '_')}.py::test_{f}[case-{rng.randrange(64)}] {outcome:<8} [{pct:3d}%]\n"
        elif r < 0.55:
            lvl = rng.choice(levels)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f",{int(t * 1000) % 1000:03d}"
            line = (f"{stamp} {lvl:<7} dtf.{m.replace('/', '.')}: task {rng.getrandbits(32):08x} attempt "
                    f"{rng.randrange(1, 4)} {f} rss={rng.uniform(50, 900):.1f}MiB cpu={rng.uniform(0, 100):.1f}%\n")
        elif r < 0.70:
            line = (f"gcc -O2 -g -Wall -Wextra -fPIC -Iinclude -I/usr/include/python3.11 -DNDEBUG "
                    f"-c src/{m}.c -o build/{m}.o\n")
        elif r < 0.80:
            line = (f"src/{m}.c:{rng.randrange(1, 3000)}:{rng.randrange(1, 80)}: warning: unused variable "
                    f"'{f[:rng.randrange(3, len(f))]}' [-Wunused-variable]\n")
        elif r < 0.90:
            line = (f'  File "/opt/lab/venv/lib/python3.11/site-packages/dtf/{m}.py", line {rng.randrange(1, 2000)}, '
                    f"in {f}\n    result = self._{f}(payload, timeout={rng.uniform(0.1, 30):.2f})\n")
        elif r < 0.97:
            a = rng.uniform(0, 1)
            line = f"E       assert {a:.6f} == {a + rng.uniform(-0.01, 0.01):.6f} \u00b1 1.0e-03\n"
        else:
            line = f"{'=' * 30} {rng.randrange(1, 900)} passed, {rng.randrange(0, 9)} failed in {rng.uniform(1, 600):.2f}s {'=' * 30}\n"
        out.append(line)
        size += len(line.encode())
    return "".join(out).encode()[:n]


def repetitive_text(n: int) -> bytes:
    line = b"[INFO] waiting for device /dev/ttyUSB0 ... not ready, retrying\n"
    return (line * (n // len(line) + 1))[:n]


def random_bytes(n: int) -> bytes:
    return random.Random(2).randbytes(n)


def store_class(fmt: str, max_handles: int | None = None) -> type[LogStore]:
    codec, _, opt = fmt.partition("/")
    attrs: dict[str, object] = {"_codec_name": codec, "_probe": opt != "noprobe"}
    if max_handles is not None:
        attrs["_max_handles"] = max_handles
    return type(f"Bench_{codec}", (LogStore,), attrs)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure_store(fmt: str, data: bytes, root: Path) -> dict[str, float]:
    cls = store_class(fmt)
    store = cls(root, max_bytes=4 * len(data))
    t0, c0 = time.perf_counter(), time.process_time()
    for off in range(0, len(data), CHUNK):
        store.append("bench-task", 1, "stdout", off, data[off:off + CHUNK])
    store.close("bench-task", 1)
    write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
    disk = tree_bytes(root)
    reader = cls(root, max_bytes=4 * len(data))
    got: list[bytes] = []
    off = 0
    t0 = time.perf_counter()
    while True:
        s = reader.read("bench-task", offset=off, limit=MiB)
        got.append(s.data)
        off = s.next_offset
        if off >= s.size:
            break
    read_s = time.perf_counter() - t0
    if b"".join(got) != data:
        raise SystemExit(f"{fmt}: read back differs from what was written")
    return {"write_mb_s": len(data) / write_s / 1e6, "write_mb_cpu_s": len(data) / write_cpu / 1e6,
            "disk_ratio": disk / len(data), "disk_bytes": disk, "read_mb_s": len(data) / read_s / 1e6}


def measure_gzip_members(level: int, data: bytes, root: Path) -> dict[str, float]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "1.stdout.gz"
    t0, c0 = time.perf_counter(), time.process_time()
    for off in range(0, len(data), CHUNK):
        with open(path, "ab") as f:
            f.write(gzip.compress(data[off:off + CHUNK], level, mtime=0))
    write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
    disk = path.stat().st_size
    t0 = time.perf_counter()
    # Streamed: gzip.decompress() on many members copies the rest of the input per member.
    with gzip.open(path, "rb") as f:
        back = f.read()
    read_s = time.perf_counter() - t0
    if back != data:
        raise SystemExit("gzip members: read back differs")
    return {"write_mb_s": len(data) / write_s / 1e6, "write_mb_cpu_s": len(data) / write_cpu / 1e6,
            "disk_ratio": disk / len(data), "disk_bytes": disk, "read_mb_s": len(data) / read_s / 1e6}


def measure_handles(max_handles: int, chunk: int, data: bytes, root: Path, streams: int) -> dict[str, float]:
    """Round-robin appends to streams that already exist; creating them is timed on its own."""
    cls = store_class(DEFAULT_CODEC, max_handles)
    store = cls(root)
    t0 = time.perf_counter()
    for s in range(streams):
        store.append(f"task{s:04d}", 1, "stdout", 0, b"start\n")
    create_s = time.perf_counter() - t0
    # At least 8 rounds, so that the policy, not the first write to each file, is what is timed.
    per = max(8 * chunk, len(data) // streams // chunk * chunk)
    data = data * (per // len(data) + 1)
    n = 0
    t0 = time.perf_counter()
    for off in range(0, per, chunk):
        piece = data[off:off + chunk]
        for s in range(streams):
            store.append(f"task{s:04d}", 1, "stdout", 6 + off, piece)
            n += 1
    write_s = time.perf_counter() - t0
    store.close_all()
    return {"write_mb_s": n * chunk / write_s / 1e6, "us_per_chunk": write_s / n * 1e6,
            "us_per_new_stream": create_s / streams * 1e6}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4 if k == "disk_ratio" else 1) for k in runs[0]}


def print_table(summary: dict[str, dict[str, dict[str, float]]]) -> None:
    """The medians as the rows of the table in logstore.py's docstring (on stderr)."""
    print(f"{'':<21}{'test-log text':<25}{'repetitive text':<25}random bytes", file=sys.stderr)
    print(f"{'':<21}" + "wall  cpu  disk    read  " * 3, file=sys.stderr)
    for fmt, by_kind in summary.items():
        if "random" not in by_kind:
            continue
        row = f"  {fmt:<17}"
        for kind in ("text", "repetitive", "random"):
            v = by_kind[kind]
            row += f"{v['write_mb_s']:5.0f} {v['write_mb_cpu_s']:4.0f} {v['disk_ratio']:6.4f} {v['read_mb_s']:6.0f}"
        print(row, file=sys.stderr)
    for fmt, by_kind in summary.items():
        if "us_per_chunk" in by_kind.get("text", {}):
            v = by_kind["text"]
            print(f"  {fmt:<34} {v['us_per_chunk']:6.1f} us/chunk  new stream {v['us_per_new_stream']:7.1f} us",
                  file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    formats = args.formats.split(",")
    for fmt in formats:
        if fmt.partition("/")[0] not in _CODECS:
            ap.error(f"unknown format {fmt!r}")
    n = args.mib * MiB
    t0 = time.perf_counter()
    kinds = {"text": test_log_text(n), "repetitive": repetitive_text(n), "random": random_bytes(n)}
    print(f"generated {len(kinds)} x {args.mib} MiB in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    base = Path(tempfile.mkdtemp(prefix="dtf-logbench-", dir=args.dir))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for run in range(args.runs):
            work = base / f"run{run}"
            for fmt in formats:
                for kind, data in kinds.items():
                    r = measure_store(fmt, data, work / fmt.replace("/", "_") / kind)
                    results.setdefault(fmt, {}).setdefault(kind, []).append(r)
                    print(f"run {run} {fmt:<15} {kind:<10} write {r['write_mb_s']:7.1f} MB/s {r['write_mb_cpu_s']:7.1f} MB/cpu-s disk "
                          f"{r['disk_ratio']:.4f}  read {r['read_mb_s']:8.1f} MB/s", file=sys.stderr)
                shutil.rmtree(work / fmt.replace("/", "_"), ignore_errors=True)
            for level in (1, 6):
                fmt = f"gzip-members-{level}"
                for kind, data in kinds.items():
                    r = measure_gzip_members(level, data, work / fmt / kind)
                    results.setdefault(fmt, {}).setdefault(kind, []).append(r)
                    print(f"run {run} {fmt:<15} {kind:<10} write {r['write_mb_s']:7.1f} MB/s {r['write_mb_cpu_s']:7.1f} MB/cpu-s disk "
                          f"{r['disk_ratio']:.4f}  read {r['read_mb_s']:8.1f} MB/s", file=sys.stderr)
                shutil.rmtree(work / fmt, ignore_errors=True)
            text = kinds["text"][: min(n, 16 * MiB)]
            for streams in (64, 256):
                for chunk in (4096, CHUNK):
                    for handles in (0, 64):
                        fmt = f"handles-{'lru64' if handles else 'per-chunk'}-{streams}streams-{chunk // 1024}k"
                        r = measure_handles(handles, chunk, text, work / fmt, streams)
                        results.setdefault(fmt, {}).setdefault("text", []).append(r)
                        print(f"run {run} {fmt:<34} write {r['write_mb_s']:7.1f} MB/s {r['us_per_chunk']:6.1f} "
                              f"us/chunk  new stream {r['us_per_new_stream']:7.1f} us", file=sys.stderr)
                        shutil.rmtree(work / fmt, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = {fmt: {kind: median_of(runs) for kind, runs in by_kind.items()} for fmt, by_kind in results.items()}
    print_table(summary)
    print(json.dumps({"mib": args.mib, "chunk": CHUNK, "runs": args.runs, "default": DEFAULT_CODEC,
                      "cpus": os.cpu_count(), "medians": summary}))


if __name__ == "__main__":
    main()
