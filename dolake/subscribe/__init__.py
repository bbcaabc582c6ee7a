"""Change-stream subscribers: ``ws://HOST:PORT/cdc/subscribe`` (JSON, Debezium envelope).

Mounted by the lake writer (and by ``python -m dolake.subscribe`` standalone):
``handle_subscriber(ws, ctx=SubscribeContext.from_config(config, data_dir))``.
See README.md in this directory for the protocol.
"""

from dolake.subscribe.context import Limits, SubscribeContext
from dolake.subscribe.session import handle_subscriber

PATH = "/cdc/subscribe"

__all__ = ["PATH", "Limits", "SubscribeContext", "handle_subscriber"]
