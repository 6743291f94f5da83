"""The embedded MongoDB-compatible store for development and tests.

mongoeco's wire-protocol server on a SQLite file: chatq talks to it with the
real PyMongo driver, exactly as to MongoDB. Production uses a real MongoDB.

    python -m ops.embedded_mongo --port 27017 --path .data/mongo.sqlite3
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path


async def serve(port: int, path: Path) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer

    path.parent.mkdir(parents=True, exist_ok=True)
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(str(path)), host="127.0.0.1",
                                      port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = await server.start()
    print(f"embedded MongoDB listening on {address.host}:{address.port} ({path})", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--path", type=Path, default=Path(".data/mongo.sqlite3"))
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.path))


if __name__ == "__main__":
    main()
