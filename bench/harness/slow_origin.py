"""Figure 3's slow origin: every GET waits DELAY seconds, then sends the response headers
(Cache-Control: max-age=3600, Content-Length) and the first 10% of a 100 KiB body, and the
rest over TRICKLE more seconds. Its own time to first byte is therefore DELAY; a cache that
makes waiters wait for the whole object shows DELAY + TRICKLE instead.

    python3 slow_origin.py PORT DELAY TRICKLE
"""

import asyncio
import sys

BODY = bytes(range(256)) * 400  # 102,400 bytes
PARTS = 10


async def handle(reader, writer, delay, trickle):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         b"Cache-Control: max-age=3600\r\n"
                         b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n")
            step = len(BODY) // PARTS
            for i in range(PARTS):
                writer.write(BODY[i * step:(i + 1) * step if i < PARTS - 1 else len(BODY)])
                await writer.drain()
                if i < PARTS - 1:
                    await asyncio.sleep(trickle / (PARTS - 1))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    port, delay, trickle = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay, trickle),
                                        "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
