"""`model-server`: parse TF Serving's flags, start, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.flags import ServerOptions


async def _serve(options: ServerOptions) -> int:
    from serving.server import ModelServer, StartupError

    try:
        server = ModelServer(options)
        await server.start()
    except StartupError as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("serving").info(
        "shutting down (signal received)", extra={"fields": {"event": "shutdown"}}
    )
    await server.stop()
    logging.getLogger("serving").info("stopped", extra={"fields": {"event": "stopped"}})
    return 0


def main(argv: list[str] | None = None) -> int:
    # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.flags import FlagError, parse_flags, usage

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "inspect":
        from serving import inspect

        return inspect.main(args[1:])
    if any(a in ("--help", "-h", "-help") for a in args):
        print(usage())
        return 0
    try:
        options = parse_flags(args)
    except FlagError as exc:
        print(f"{exc}\n\n{usage()}", file=sys.stderr)
        return 1
    if options.version:
        import tensorflow as tf

        from serving import __version__

        print(f"TensorFlow ModelServer: {__version__}\nTensorFlow Library: {tf.__version__}")
        return 0
    from serving.observability.logs import setup_logging

    setup_logging(options.log_format, options.log_level)
    from serving.config.model_config import ConfigError

    try:
        return asyncio.run(_serve(options))
    except ConfigError as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
