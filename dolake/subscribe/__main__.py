"""``python -m dolake.subscribe --config cluster.toml [--host] [--port 0]``: subscribers only.

The same handler the lake writer mounts at ``/cdc/subscribe``, in a process
of its own (announces service "subscribe"); useful to scale fan-out apart
from the lake writer, and what the tests run.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from dolake.subscribe import PATH, SubscribeContext, handle_subscriber
from dosql import config as config_mod
from dosql import logs
from dosql.service import Service


async def serve(ctx: SubscribeContext, host: str, port: int) -> None:
    service = Service("subscribe", tokens=ctx.config.tokens, ws_paths=(PATH,))

    async def handler(conn) -> None:
        await handle_subscriber(conn, ctx=ctx)

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: service.serve(
                    handler, host, port, max_size=1024 * 1024, task_status=task_status
                )
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dolake.subscribe")
    parser.add_argument("--config", required=True, help="deployment TOML (e.g. cluster.toml)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", help="lake data dir (default: the config's directory)")
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config)
    logs.setup("subscribe", cfg.log_level)
    data_dir = args.data_dir or str(Path(args.config).resolve().parent)
    trio.run(serve, SubscribeContext.from_config(cfg, data_dir), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
