"""An off-the-shelf MCP client -- the official Python SDK, unchanged -- against
the sidecar's MCP front door.

Usage: mcp_client.py URL TOKEN
Prints one JSON document with what the client saw.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
from mcp_seen import seen


async def main(url: str, token: str) -> None:
    out = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocolVersion
            out["server"] = init.serverInfo.name
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["echo_schema"] = next(
                (t.inputSchema for t in tools.tools if t.name == "echo"), None
            )
            await session.send_ping()
            out["echo"] = seen(await session.call_tool("echo", {"text": "hello"}))
            out["invalid"] = seen(await session.call_tool("echo", {"text": 7}))
            out["scope"] = seen(await session.call_tool("lookup", {"id": "r1"}))
            out["approval"] = seen(
                await session.call_tool("refund", {}, meta={"warden.dev/noWait": True})
            )
            limited = [seen(await session.call_tool("limited", {})) for _ in range(4)]
            out["limited"] = limited
            try:
                await session.call_tool("no_such_tool", {})
                out["unknown"] = None
            except McpError as e:
                out["unknown"] = {"code": e.error.code, "data": e.error.data}
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
