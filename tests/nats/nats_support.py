"""Helpers of the NATS tests that are not fixtures (importable by name from the tests)."""

from __future__ import annotations

import asyncio
import json

import nats

from tcp_relay import TcpRelay

__all__ = ["TcpRelay", "delete_streams"]


def delete_streams(url: str, prefix: str) -> list[str]:
    """Delete the streams whose names start with ``prefix_`` (a test's own); returns them."""

    async def run() -> list[str]:
        nc = await nats.connect(url)
        try:
            names: list[str] = []
            offset = 0
            while True:
                reply = await nc.request(
                    "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout=5
                )
                answer = json.loads(reply.data)
                page = answer.get("streams") or []
                names += [n for n in page if n.startswith(f"{prefix}_")]
                offset += len(page)
                if not page or offset >= answer.get("total", 0):
                    break
            for name in names:
                await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
            return names
        finally:
            await nc.close()

    return asyncio.run(run())
