"""`model-server`: parse TF Serving's flags, start, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s", "%Y-%m-%d %H:%M:%S"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # TensorFlow's Python logger repeats deprecation notes about the TF1 loader.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


async def _serve(options) -> int:
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
    logging.getLogger("serving").info("shutting down: draining in-flight requests")
    await server.stop()
    logging.getLogger("serving").info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.flags import FlagError, parse_flags, usage

    args = sys.argv[1:] if argv is None else argv
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
    setup_logging(options.log_format, options.log_level)
    from serving.config.model_config import ConfigError

    try:
        return asyncio.run(_serve(options))
    except ConfigError as exc:
        print(f"Failed to start server. Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
