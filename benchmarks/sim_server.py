"""The simulator in a process of its own, driven by ``benchmarks/run.py``.

Started as ``python benchmarks/sim_server.py --n N --window W --seed S --ids-file PATH``;
it speaks one JSON object per line on stdin and stdout:

1. on start it prints ``{"url": ..., "token": ...}`` (no operations exist yet);
2. ``{"cmd": "create"}`` scripts the N operations (completion times uniform over the
   window), writes their IDs and completion times to the IDs file and prints
   ``{"created": t0}``, ``t0`` being the :func:`time.monotonic` time just before they were
   created (system-wide on Linux, so the client process can compare against it);
3. ``{"cmd": "report", "floor": bool}`` prints what the server saw since ``create``:
   requests (from the request log: the server is the honest counter), answers by status,
   status entries served, the server's own CPU seconds and, with ``floor``, the CPU floor:
   the time of plain ``orjson.loads`` over the bodies of every 200 answer it sent, rebuilt
   from the log (see :func:`_entry_at`); then it stops.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections import Counter
from typing import Any

import orjson

from asyncpoll.testing import SimulatedServer

_STEP = 10.0  # SimulatedServer.add_operations' default progress_step


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


class _Script:
    """What the server scripted for each operation, to rebuild the entries it served."""

    def __init__(self, ids: list[str], created: float, ends: list[float], offset: float) -> None:
        self.ids = ids
        self.created = created
        self.ends = dict(zip(ids, ends, strict=True))
        self.seq = {op_id: index + 1 for index, op_id in enumerate(ids)}
        self.offset = offset
        self._iso: dict[int, str] = {}

    def iso(self, monotonic: float) -> str:
        second = int(self.offset + monotonic)
        text = self._iso.get(second)
        if text is None:
            text = self._iso[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return text

    def entry_at(self, op_id: str, now: float) -> dict[str, Any]:
        """The default-shape entry of ``op_id`` at ``now``, as the simulator renders it."""
        start, end, seq = self.created, self.ends[op_id], self.seq[op_id]
        if now < end:
            span = end - start
            percent = min(100.0, (now - start) / span * 100.0) if span > 0 else 0.0
            percent = max(0.0, math.floor(percent / _STEP) * _STEP)
            return _entry(
                op_id,
                "Running",
                _number(percent),
                None,
                self.iso(start),
                self.iso(start + span * percent / 100.0),
            )
        result = {"createdResourceIds": [f"prog_{seq}", f"task_{seq}"]}
        return _entry(op_id, "Succeeded", 100, result, self.iso(start), self.iso(end))


def _number(value: float) -> float | int:
    value = round(value, 6)
    return int(value) if value.is_integer() else value


def _entry(
    op_id: str, state: str, percent: float | int, result: Any, created: str, updated: str
) -> dict[str, Any]:
    return {
        "id": op_id,
        "state": state,
        "percentComplete": percent,
        "result": result,
        "error": None,
        "createdAt": created,
        "lastUpdatedAt": updated,
    }


def _floor(server: SimulatedServer, script: _Script, log: list[Any]) -> dict[str, Any]:
    """Time plain ``orjson.loads`` over every 200 body served, rebuilt one at a time."""
    known = script.ends
    seconds = 0.0
    size = 0
    bodies = 0
    entries = 0
    for record in log:
        if record.status != 200:
            continue
        ids = [i for i in dict.fromkeys(record.ids) if i in known]
        body = orjson.dumps([script.entry_at(i, record.time) for i in ids])
        started = time.perf_counter()
        orjson.loads(body)
        seconds += time.perf_counter() - started
        size += len(body)
        bodies += 1
        entries += len(ids)
    # The rebuilt terminal entries must be exactly what the server serves now.
    now = time.monotonic()
    sample = [i for i in script.ids[:200] if known[i] <= now]
    mismatches = sum(server.operation_json(i) != script.entry_at(i, now) for i in sample)
    return {
        "orjson_seconds": seconds,
        "bodies": bodies,
        "body_bytes": size,
        "entries": entries,
        "checked_entries": len(sample),
        "mismatched_entries": mismatches,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--ids-file", required=True)
    args = parser.parse_args()

    server = SimulatedServer(seed=args.seed, log_limit=None)
    offset = time.time() - time.monotonic()
    server.start()
    _reply({"url": server.url, "token": server.token})
    script: _Script | None = None
    cpu_created = 0.0
    try:
        for line in sys.stdin:
            command = orjson.loads(line)
            if command["cmd"] == "create":
                server.clear_log()
                created = time.monotonic()
                ids = server.add_operations(args.n, window=args.window)
                ends = [server.completion_time(i) or math.inf for i in ids]
                with open(args.ids_file, "wb") as file:
                    file.write(orjson.dumps({"ids": ids, "completions": ends, "created": created}))
                script = _Script(ids, created, ends, offset)
                cpu_created = _cpu()
                _reply({"created": created})
            elif command["cmd"] == "report":
                server_cpu = _cpu() - cpu_created
                log = server.requests
                statuses = Counter(str(record.status) for record in log)
                served = sum(len(set(record.ids)) for record in log if record.status == 200)
                report: dict[str, Any] = {
                    "requests": len(log),
                    "statuses": dict(statuses),
                    "entries": served,
                    "server_cpu_seconds": server_cpu,
                }
                if command.get("floor") and script is not None:
                    report["floor"] = _floor(server, script, log)
                _reply(report)
                break
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
