#!/usr/bin/env python3
"""Open N keep-alive connections to a proxy, send one request on each, keep them all open.

Usage: idle_clients.py HOST PORT N READY_FILE HOLD_FILE

Prints progress to stderr. Once every connection got its 200 and is idle, writes the count to
READY_FILE and then keeps the connections open until HOLD_FILE is removed (the caller measures
the proxy's memory in between), then closes them. Standard library only.
"""

import asyncio
import os
import sys

REQUEST = b"GET /idle HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-clients\r\n\r\n"


async def one(host, port, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"status {status!r}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        return reader, writer


async def main():
    host, port, n, ready_file, hold_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    # Open them a few hundred at a time: the listen backlog is finite.
    sem = asyncio.Semaphore(200)
    conns = await asyncio.gather(*(one(host, port, sem) for _ in range(n)))
    print(f"idle_clients: {len(conns)} connections open and idle", file=sys.stderr)
    with open(ready_file, "w") as f:
        f.write(f"{len(conns)}\n")
    while os.path.exists(hold_file):
        await asyncio.sleep(0.2)
    # Every connection must still be open: the proxy must not have closed any of them.
    closed = sum(1 for r, _ in conns if r.at_eof())
    for _, w in conns:
        w.close()
    if closed:
        print(f"idle_clients: {closed} connections were closed by the proxy", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
