"""Where metergate's workers spend the GIL under load: py-spy on both workers, summed.

    .venv/bin/python -m tests.benchmarks.profile [--concurrency 64] [--seconds 15]
                                                 [--stream] [--hit] [--top 40]
                                                 [--worker-class gevent|gthread]

Starts the simulator and metergate as ``tests.benchmarks.perf`` does (gunicorn, two
workers, gevent as shipped or gthread, PostgreSQL, Redis, every feature on), warms up,
then runs wrk at the given concurrency while ``py-spy record --gil --format raw``
samples each worker. Prints the functions that hold the GIL most, by own time and by
inclusive time (shares of all samples), and keeps the collapsed stacks in ``.bench/``
for flame graphs (``flamegraph.pl`` or speedscope). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from tests.benchmarks.perf import (
    BENCH_DIR,
    BIN,
    REPO,
    THREADS,
    cpu_seconds,
    deployment,
    start_metergate,
    start_simulator,
    wrk,
)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py)``: one name per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def summarise(stack_files: list[Path], top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for stack_file in stack_files:
        for line in stack_file.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [frame_name(frame) for frame in stack.split(";")[1:]]  # [0]: thread
            if not frames:
                continue
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        print("no samples")
        return
    print(f"{total} samples holding the GIL")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"\nby {title} time:")
        for frame, count in counter.most_common(top):
            print(f"  {100 * count / total:5.1f} %  {frame}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--stream", action="store_true", help="streamed calls")
    parser.add_argument("--hit", action="store_true", help="cache hits (the same question)")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--worker-class", default="gevent", help="gunicorn's (gevent, as shipped; or gthread)"
    )
    args = parser.parse_args(argv)
    BENCH_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    log_dir = BENCH_DIR / f"profile-{stamp}"
    log_dir.mkdir(parents=True)
    mode = "same" if args.hit else "unique"
    with ExitStack() as stack:
        dep = stack.enter_context(deployment(log_dir))
        sim = start_simulator(log_dir)
        stack.callback(sim.stop)
        threads = THREADS if args.worker_class == "gthread" else 1
        mg = start_metergate(log_dir, dep, sim.base_url, args.worker_class, threads)
        stack.callback(mg.stop)
        wrk(mg, args.concurrency, 3, mode=mode, stream=args.stream)  # warm-up
        spies = []
        outputs = []
        for pid in mg.worker_pids():
            out = log_dir / f"worker-{pid}.txt"
            command = [str(BIN / "py-spy"), "record", "--gil", "--format", "raw"]
            command += ["--rate", str(args.rate), "--duration", f"{args.seconds:.0f}"]
            command += ["--pid", str(pid), "--output", str(out)]
            spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=REPO))
            outputs.append(out)
        pids = mg.pids()
        before = {pid: cpu_seconds([pid]) for pid in pids}
        run = wrk(mg, args.concurrency, args.seconds, mode=mode, stream=args.stream)
        used = {pid: cpu_seconds([pid]) - before[pid] for pid in pids}
        for spy in spies:
            spy.wait(60)
        print(
            f"c={args.concurrency}: {run.rps:.0f} req/s, p50 {run.p50_ms:.2f} ms,"
            f" CPU {run.cpu_ms_per_request:.2f} ms/req (under py-spy), bad {run.bad}"
        )
        print("CPU seconds per process over the run (py-spy's own time not included):")
        for pid in pids:
            print(f"  {used[pid]:7.2f} s  pid {pid}  {command_line(pid)[:90]}")
        summarise([out for out in outputs if out.exists()], args.top)
    print(f"\nstacks: {log_dir.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
