"""Fleet mode (issue 12): K processes in one fleet against K processes on their own.

    python benchmarks/fleet.py --quick          # N=200 over 4 s, K in 1, 2, 4 (~1 min)
    python benchmarks/fleet.py                  # N=1,000 over 10 s, K in 1, 2, 4, 8 (~2 min)
    python benchmarks/fleet.py --runs 3 --json fleet.json
    python benchmarks/fleet.py --backend trio   # every member on trio (default: half each)

The issue's figure: K members watching the same operations send together at most 1.2x the
requests of one process alone (K = 2, 4, 8), with each member's CPU. Beside each fleet,
the same K processes without a fleet: what users run today.

One ``redis-server`` of its own on a free loopback port (nothing persisted), one fresh
simulator process (``sim_server.py``, the counter of requests) per setup, and K member
processes (``python benchmarks/fleet.py member``), each waiting with
``poller.as_completed(ids)`` for the same N operations, whose completion times are uniform
over the window. Fixed interval (``PollInterval(initial=I, maximum=I, multiplier=1.0)``),
batches of at most 100 IDs; in a fleet every member has
``RedisFleet(url, namespace=<fresh per setup>, lease=L)``. Half the members run on
asyncio (aiohttp), half on trio (httpx), unless ``--backend`` says otherwise.

Each member measures its own CPU (``getrusage``: user + system, from just before its
Poller opens until it has closed, and in all since the interpreter started), its
latency (the time it saw each operation terminal minus the operation's scripted
completion time; ``time.monotonic`` is system-wide on Linux), and prints its
``poller.statistics()`` (requests, leading, fleet_members, fleet_connected), sampled
every 0.25 s while it runs as well. The driver reads Redis's CPU from ``/proc`` and its
command count from ``INFO``, and after each fleet setup counts the namespace's keys left.

Diagnostics: ``BENCH_PROFILE=/tmp/p`` writes a cProfile of every member to
``/tmp/p.<namespace>-<member>-<backend>.prof`` (its CPU figure is then meaningless).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

# The bounds and the machine as run.py defines them (this directory is on sys.path).
from contenders import _cpu, _rank
from run import _line, _send, lower_bound, machine, observing_bound

HERE = Path(__file__).resolve().parent
TARGET = 1.2  # issue 12: a fleet of K sends at most 1.2x the requests of one process alone
MODES: dict[str, dict[str, Any]] = {
    "quick": {"n": 200, "window": 4.0, "ks": [1, 2, 4]},
    "full": {"n": 1000, "window": 10.0, "ks": [1, 2, 4, 8]},
}


# -- a member (one process) --------------------------------------------------------------


def member_main(backend: str) -> int:
    """One member: imports, says it is ready, reads its job on stdin, waits, reports."""
    import anyio
    import orjson

    import asyncpoll

    if backend == "trio":
        import httpx  # noqa: F401  (the trio transport's; imported before the baseline)
        import trio  # noqa: F401
    else:
        import aiohttp  # noqa: F401
    if "coredis" not in sys.modules:
        import coredis  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    config = json.loads(sys.stdin.readline())
    with open(config["ids_file"], "rb") as file:
        script = orjson.loads(file.read())
    ids: list[str] = script["ids"]
    completions: list[float] = script["completions"]
    index_of = {op_id: index for index, op_id in enumerate(ids)}
    observed = array.array("d", bytes(8 * len(ids)))
    samples: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}

    async def sample(poller: asyncpoll.Poller, started: float) -> None:
        while True:
            stats = poller.statistics()
            samples.append(
                {
                    "t": round(time.monotonic() - started, 3),
                    "requests": stats.requests,
                    "leading": list(stats.leading),
                    "members": stats.fleet_members,
                    "connected": stats.fleet_connected,
                    "watched": stats.watched,
                }
            )
            await anyio.sleep(0.25)

    async def one(poller: asyncpoll.Poller, index: int, op_id: str) -> None:
        with contextlib.suppress(asyncpoll.OperationFailed):
            await poller.wait(op_id)
        observed[index] = time.monotonic()

    async def work() -> None:
        interval = config["interval"]
        every = asyncpoll.PollInterval(initial=interval, maximum=interval, multiplier=1.0)
        fleet = None
        if config["redis"] is not None:
            fleet = asyncpoll.RedisFleet(
                config["redis"], namespace=config["namespace"], lease=config["lease"]
            )
        session = asyncpoll.Session(
            config["url"], token=config["token"], max_batch_size=config["max_batch"]
        )
        started = time.monotonic()
        async with session, asyncpoll.Poller(session, fleet=fleet, interval=every) as poller:
            figures["joined_after"] = time.monotonic() - started
            async with anyio.create_task_group() as group:
                group.start_soon(sample, poller, started)
                if config["caller"] == "wait":
                    async with anyio.create_task_group() as callers:
                        for index, op_id in enumerate(ids):
                            callers.start_soon(one, poller, index, op_id)
                else:
                    async with poller.as_completed(ids) as done:
                        async for operation in done:
                            observed[index_of[operation.id]] = time.monotonic()
                group.cancel_scope.cancel()
            stats = poller.statistics()
            figures.update(
                requests=stats.requests,
                errors=stats.errors,
                retries=stats.retries,
                operations_polled=stats.operations_polled,
                leading=list(stats.leading),
                fleet_members=stats.fleet_members,
                fleet_connected=stats.fleet_connected,
            )

    cpu_before = _cpu()
    wall_before = time.monotonic()
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        # Diagnostics only: the profiler's overhead makes the CPU figure meaningless.
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(lambda: anyio.run(work, backend=backend))
        profiler.dump_stats(f"{profile}.{config['label']}.prof")
    else:
        anyio.run(work, backend=backend)
    wall = time.monotonic() - wall_before
    cpu = _cpu() - cpu_before
    latencies = sorted(
        seen - done for seen, done in zip(observed, completions, strict=True) if seen > 0
    )
    members_seen = [s["members"] for s in samples if s["members"] is not None]
    figures.update(
        backend=backend,
        operations=len(ids),
        observed=len(latencies),
        cpu_seconds=cpu,
        cpu_seconds_process=_cpu(),
        wall_seconds=wall,
        latency_p50=_rank(latencies, 0.50),
        latency_p99=_rank(latencies, 0.99),
        latency_max=_rank(latencies, 1.0),
        led_ever=sorted({space for s in samples for space in s["leading"]}),
        led_samples=sum(bool(s["leading"]) for s in samples),
        fleet_members_max=max(members_seen, default=None),
        disconnected_samples=sum(s["connected"] is False for s in samples),
        samples=samples,
    )
    print(json.dumps(_finite(figures)), flush=True)
    return 0


# -- Redis, our own ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Redis:
    """A ``redis-server`` of our own on a free loopback port, nothing persisted, and a
    minimal RESP client for the driver's few questions (INFO, KEYS)."""

    def __init__(self, log: IO[bytes]) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise SystemExit("redis-server is not on the PATH (apt-get install redis-server)")
        self.port = _free_port()
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("redis-server did not start (see its log)")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def cpu_seconds(self) -> float:
        """User + system CPU of the redis-server process, from ``/proc``."""
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def commands_processed(self) -> int:
        info = self.command("INFO", "stats")
        assert isinstance(info, str)
        for line in info.splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":", 1)[1])
        return -1

    def command_counts(self) -> dict[str, int]:
        """Calls per command since the server started (``INFO commandstats``)."""
        info = self.command("INFO", "commandstats")
        assert isinstance(info, str)
        counts = {}
        for line in info.splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_") :].split(":", 1)
                counts[name] = int(rest.split(",", 1)[0].split("=", 1)[1])
        return counts

    def command(self, *args: str) -> Any:
        request = f"*{len(args)}\r\n".encode()
        for arg in args:
            data = arg.encode()
            request += b"$%d\r\n%s\r\n" % (len(data), data)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(request)
            return _read_reply(conn.makefile("rb"))


def _read_reply(stream: IO[bytes]) -> Any:
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise OSError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)[:size]
        return data.decode(errors="replace")
    if kind == b"*":
        return [_read_reply(stream) for _ in range(int(rest))]
    raise OSError(f"unexpected reply from redis-server: {line[:80]!r}")


def _keys_left(redis: Redis, namespace: str) -> dict[str, int]:
    """The namespace's keys, counted by kind (``want``, ``lead``, ``done``...)."""
    prefix = f"asyncpoll:{{{namespace}}}:"
    found = redis.command("KEYS", prefix + "*")
    counts: dict[str, int] = {}
    for key in found if isinstance(found, list) else []:
        kind = str(key)[len(prefix) :].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


# -- the driver --------------------------------------------------------------------------


def _backends(k: int, choice: str) -> list[str]:
    if choice != "mixed":
        return [choice] * k
    return ["asyncio" if i % 2 == 0 else "trio" for i in range(k)]


def run_setup(
    *,
    fleet: bool,
    k: int,
    n: int,
    window: float,
    interval: float,
    lease: float,
    max_batch: int,
    seed: int,
    backend: str,
    caller: str,
    redis: Redis,
    namespace: str,
    workdir: Path,
) -> dict[str, Any]:
    """K member processes (in one fleet, or each on its own) against a fresh simulator."""
    label = f"{'fleet' if fleet else 'alone'}-{k}"
    ids_file = workdir / f"ids-{namespace}.json"
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    server_command = [sys.executable, str(HERE / "sim_server.py"), "--n", str(n)]
    server_command += ["--window", str(window), "--seed", str(seed), "--ids-file", str(ids_file)]
    backends = _backends(k, backend)
    members: list[subprocess.Popen[str]] = []
    errors = open(workdir / f"stderr-{namespace}.txt", "w+", encoding="utf-8")  # noqa: SIM115
    server = subprocess.Popen(server_command, **pipes)
    try:
        assert server.stdout is not None
        hello = _line(server.stdout, server, "the simulator")
        for name in backends:
            command = [sys.executable, str(Path(__file__).resolve()), "member", name]
            members.append(subprocess.Popen(command, stderr=errors, **pipes))
        for process in members:
            assert process.stdout is not None
            _line(process.stdout, process, "a member")
        _send(server, {"cmd": "create"})
        created = _line(server.stdout, server, "the simulator")["created"]
        redis_cpu, redis_commands = redis.cpu_seconds(), redis.commands_processed()
        redis_counts = redis.command_counts()
        started = time.monotonic()
        job = {
            "url": hello["url"],
            "token": hello["token"],  # on stdin, never on a command line
            "ids_file": str(ids_file),
            "interval": interval,
            "max_batch": max_batch,
            "redis": redis.url if fleet else None,
            "namespace": namespace,
            "lease": lease,
            "caller": caller,
        }
        for index, process in enumerate(members):
            _send(process, {**job, "label": f"{namespace}-{index}-{backends[index]}"})
        deadline = started + window + 30 * interval + 60
        results: list[dict[str, Any]] = []
        for index, process in enumerate(members):
            try:
                out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if process.returncode == 0 and lines:
                result: dict[str, Any] = json.loads(lines[-1])
            else:
                errors.seek(0)
                tail = errors.read().strip().splitlines()[-1:] or [""]
                result = {"failed": f"exit status {process.returncode}: {tail[0][:200]}"}
            result["member"] = index
            result["backend"] = backends[index]
            results.append(result)
        wall = time.monotonic() - started
        redis_cpu = redis.cpu_seconds() - redis_cpu
        counts = redis.command_counts()
        redis_commands = redis.commands_processed() - redis_commands - 2  # our own INFOs
        by_command = {
            name: count - redis_counts.get(name, 0)
            for name, count in sorted(counts.items())
            if name != "info" and count > redis_counts.get(name, 0)
        }
        _send(server, {"cmd": "report", "floor": False})
        report = _line(server.stdout, server, "the simulator")
        with open(ids_file, "rb") as file:
            script = json.load(file)
    finally:
        for process in [*members, server]:
            if process.poll() is None:
                try:
                    process.wait(timeout=10 if process is server else 0.001)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        errors.seek(0)
        said = errors.read().strip()
        errors.close()
        ids_file.unlink(missing_ok=True)
    completions = [c - created for c in script["completions"]]
    observed = [r.get("observed", 0) for r in results]
    failed = [r["failed"] for r in results if "failed" in r]
    return {
        "setup": label,
        "fleet": fleet,
        "k": k,
        "namespace": namespace,
        "requests": report["requests"],
        "statuses": report["statuses"],
        "entries": report["entries"],
        "server_cpu_seconds": report["server_cpu_seconds"],
        "redis_cpu_seconds": redis_cpu if fleet else None,
        "redis_commands": redis_commands if fleet else None,
        "redis_commands_by_name": by_command if fleet else None,
        "keys_left": _keys_left(redis, namespace) if fleet else None,
        "bound": lower_bound(completions, interval, max_batch),
        "bound_observing": observing_bound(completions, interval, max_batch),
        "finished": not failed and all(o == n for o in observed),
        "failed": failed,
        "stderr": said[-4000:],
        "wall_seconds": wall,
        "members": results,
    }


# -- figures -----------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _load() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            return " ".join(file.read().split()[:3])
    except OSError:
        return "unknown"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _span(values: list[float], fmt: str) -> str:
    """``min / median`` of ``values`` (one value alone when there is one run)."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(min(values), fmt)} / {format(_median(values), fmt)}"


def summarise(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per setup, over the runs: each run's figures, ratios taken within the run."""
    order = [s["setup"] for s in runs[0]]
    rows = []
    for label in order:
        per_run = []
        for setups in runs:
            alone = next(s for s in setups if s["setup"] == "alone-1")
            setup = next(s for s in setups if s["setup"] == label)
            members = setup["members"]
            p99s = [m["latency_p99"] for m in members if m.get("latency_p99") is not None]
            per_run.append(
                {
                    "requests": setup["requests"],
                    "x_alone": setup["requests"] / alone["requests"],
                    "x_bound": setup["requests"] / setup["bound"],
                    "x_observing": setup["requests"] / setup["bound_observing"],
                    "member_requests": [m.get("requests") for m in members],
                    "member_cpu": [m.get("cpu_seconds") for m in members],
                    "cpu_total": sum(m.get("cpu_seconds") or 0.0 for m in members),
                    "cpu_max": max((m.get("cpu_seconds") or 0.0 for m in members), default=0),
                    "p99_worst": max(p99s, default=math.nan),
                    "leaders": sum(bool(m.get("led_ever")) for m in members),
                    "server_cpu": setup["server_cpu_seconds"],
                    "redis_cpu": setup["redis_cpu_seconds"],
                    "redis_commands": setup["redis_commands"],
                    "finished": setup["finished"],
                    "keys_left": setup["keys_left"],
                }
            )
        rows.append({"setup": label, "k": runs[0][order.index(label)]["k"], "runs": per_run})
    return rows


def markdown(rows: list[dict[str, Any]], n: int, window: float, interval: float) -> str:
    count = len(rows[0]["runs"])
    lines = [
        f"N = {n:,} operations, window {window:g} s, interval {interval:g} s; "
        f"{count} run{'s' if count > 1 else ''}, figures min / median over the runs; "
        "per-member lists from the run with the median total",
        "",
        "| setup | processes | requests | x one alone | x bound | x observing floor "
        "| requests per member | CPU s per member | CPU s all members | redis CPU s "
        "| server CPU s | latency p99 ms (worst member) | members that led |",
        "|---|--:|--:|--:|--:|--:|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        runs = row["runs"]
        middle = sorted(runs, key=lambda r: r["requests"])[(len(runs) - 1) // 2]
        fleet = row["setup"].startswith("fleet")
        mark = "" if all(r["finished"] for r in runs) else " (unfinished)"
        name = f"{'fleet' if fleet else 'alone'}, K = {row['k']}{mark}"
        lines.append(
            f"| {name} | {row['k']} | {_span([r['requests'] for r in runs], ',.0f')} "
            f"| {_span([r['x_alone'] for r in runs], '.2f')} "
            f"| {_span([r['x_bound'] for r in runs], '.2f')} "
            f"| {_span([r['x_observing'] for r in runs], '.2f')} "
            f"| {' '.join(str(x) for x in middle['member_requests'])} "
            f"| {' '.join(format(c or 0.0, '.2f') for c in middle['member_cpu'])} "
            f"| {_span([r['cpu_total'] for r in runs], '.2f')} "
            f"| {_span([r['redis_cpu'] for r in runs if r['redis_cpu'] is not None], '.2f')} "
            f"| {_span([r['server_cpu'] for r in runs], '.2f')} "
            f"| {_span([r['p99_worst'] * 1000 for r in runs], '.0f')} "
            f"| {middle['leaders'] if fleet else '-'} |"
        )
    lines += ["", f"Issue 12's target: a fleet of K sends at most {TARGET}x one process alone:", ""]
    for row in rows:
        if not row["setup"].startswith("fleet") or row["k"] < 2:
            continue
        ratios = [r["x_alone"] for r in row["runs"]]
        passed = sum(x <= TARGET for x in ratios)
        verdict = "PASS" if passed == len(ratios) else "MISS"
        each = ", ".join(f"{x:.2f}" for x in ratios)
        lines.append(
            f"- {verdict} K = {row['k']}: {each}x one alone "
            f"({passed} of {len(ratios)} runs at most {TARGET}x)"
        )
    for row in rows:
        left = [r["keys_left"] for r in row["runs"] if r["keys_left"]]
        lingering = [{k: v for k, v in left_one.items() if k not in ("done",)} for left_one in left]
        if any(lingering):
            lines.append(f"- {row['setup']}: keys left in Redis after every member left: {left}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["member"]:
        return member_main(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=200 over 4 s, K in 1, 2, 4")
    parser.add_argument("--runs", type=int, default=1, help="repeat every setup R times")
    parser.add_argument("--n", type=int, help="operations (1,000; 200 with --quick)")
    parser.add_argument("--window", type=float, help="seconds over which they complete")
    parser.add_argument("--k", help="comma-separated fleet sizes (1,2,4,8; 1,2,4 with --quick)")
    parser.add_argument("--interval", type=float, default=1.0, help="fixed interval, seconds")
    parser.add_argument("--lease", type=float, default=3.0, help="the fleet's lease, seconds")
    parser.add_argument("--backend", choices=("mixed", "asyncio", "trio"), default="mixed")
    parser.add_argument(
        "--caller",
        choices=("as_completed", "wait"),
        default="as_completed",
        help="each member: one as_completed over all IDs, or one task per wait",
    )
    parser.add_argument("--max-batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write every figure there")
    args = parser.parse_args(argv)
    settings = MODES["quick" if args.quick else "full"]
    n = args.n if args.n is not None else settings["n"]
    window = args.window if args.window is not None else settings["window"]
    ks = [int(x) for x in args.k.split(",")] if args.k else settings["ks"]
    if 1 not in ks:
        ks = [1, *ks]

    info = machine()
    load_before = _load()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"{info['platform']}; asyncpoll at {info['asyncpoll']}; load average {load_before}"
    )
    print(
        f"N={n:,}, window {window:g} s, fixed interval {args.interval:g} s, lease "
        f"{args.lease:g} s, K in {ks}, backend {args.backend}, caller {args.caller}, "
        f"{args.runs} run(s)\n",
        flush=True,
    )
    runs: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="asyncpoll-fleet-") as tmp:
        workdir = Path(tmp)
        with open(workdir / "redis.log", "wb") as log:
            redis = Redis(log)
            try:
                for run in range(args.runs):
                    setups = []
                    for k in ks:
                        # Alternate which setup goes first, so that drift in the machine's
                        # load does not always favour the same one.
                        order = [False, True] if (run + k) % 2 == 0 else [True, False]
                        for fleet in order:
                            label = f"{'fleet' if fleet else 'alone'}-{k}"
                            print(f"run {run + 1}: {label} ...", end=" ", flush=True)
                            setup = run_setup(
                                fleet=fleet,
                                k=k,
                                n=n,
                                window=window,
                                interval=args.interval,
                                lease=args.lease,
                                max_batch=args.max_batch,
                                seed=args.seed,
                                backend=args.backend,
                                caller=args.caller,
                                redis=redis,
                                namespace=f"bench-{os.getpid()}-{run}-{label}",
                                workdir=workdir,
                            )
                            each = [m.get("requests") for m in setup["members"]]
                            print(
                                f"{setup['requests']} requests (members {each}), "
                                f"{setup['wall_seconds']:.1f} s"
                                + ("" if setup["finished"] else f" UNFINISHED {setup['failed']}"),
                                flush=True,
                            )
                            setups.append(setup)
                    setups.sort(key=lambda s: (s["k"], s["fleet"]))
                    runs.append(setups)
            finally:
                redis.stop()
    load_after = _load()
    rows = summarise(runs)
    table = markdown(rows, n, window, args.interval)
    print(f"\nload average before {load_before}, after {load_after}\n")
    print(table)
    if args.json is not None:
        report = {
            "machine": info,
            "load_before": load_before,
            "load_after": load_after,
            "n": n,
            "window": window,
            "interval": args.interval,
            "lease": args.lease,
            "backend": args.backend,
            "caller": args.caller,
            "max_batch": args.max_batch,
            "seed": args.seed,
            "summary": rows,
            "runs": runs,
            "markdown": table,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
