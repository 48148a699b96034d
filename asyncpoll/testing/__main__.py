"""``python -m asyncpoll.testing``: serve the simulator in the foreground until Ctrl-C.

The first line on stdout is ``url=<base URL>``, the second ``token=<token>`` (flushed at
once, for scripts that start the simulator as a subprocess); with ``--ops N`` the N
created operation IDs follow, one per line, unless ``--ids-file`` receives them (the file
is complete before the ``url=`` line is printed). SIGINT (Ctrl-C) and SIGTERM stop it
cleanly with status 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._server import SimulatedServer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asyncpoll.testing",
        description=(
            "Serve the asyncpoll endpoint simulator until Ctrl-C. Prints url=<URL> and "
            "token=<TOKEN> lines first, then the IDs of the --ops operations, one per line "
            "(or writes them to --ids-file)."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    parser.add_argument("--ops", type=int, default=0, help="operations to create (0)")
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds over which they complete (60)"
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="fraction of them that fail (0)"
    )
    parser.add_argument("--token", default="test-token", help="bearer token (test-token)")
    parser.add_argument("--user", default="alice", help="user of the token and ops (alice)")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--ids-file", default=None, help="write the operation IDs here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until interrupted; return the exit status."""
    args = _parser().parse_args(argv)
    # The request log would only grow: nobody reads it from the command line.
    server = SimulatedServer(
        host=args.host,
        port=args.port,
        seed=args.seed,
        token=args.token,
        user=args.user,
        log_limit=0,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    try:
        ids = server.add_operations(
            args.ops, user=args.user, window=args.window, fail_rate=args.fail_rate
        )
        # The IDs file is complete before the url= line: a reader may use it at once.
        if args.ids_file is not None:
            with open(args.ids_file, "w", encoding="utf-8") as file:
                file.writelines(f"{operation_id}\n" for operation_id in ids)
        out = sys.stdout
        out.write(f"url={server.url}\ntoken={args.token}\n")
        if args.ids_file is None:
            out.writelines(f"{operation_id}\n" for operation_id in ids)
        out.flush()
        # Waiting in slices keeps the main thread responsive to Ctrl-C.
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
