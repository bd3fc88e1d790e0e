"""The official Python SDK as an MCP client that can ask its user
(elicitation), against the sidecar's MCP front door: a tool whose calls the
end user confirms is asked about before it runs.

Usage: mcp_elicit.py URL TOKEN
Prints one JSON document with what the client saw and was asked.
"""

import asyncio
import json
import sys

from mcp import ClientSession, types
from mcp.client.streamable_http import streamablehttp_client
from mcp_seen import seen


async def main(url: str, token: str) -> None:
    out = {"asked": []}
    headers = {"Authorization": f"Bearer {token}"}

    async def ask_the_user(context, params):
        # A person would read the message; this one answers by the order.
        out["asked"].append(
            {"message": params.message, "schema": params.requestedSchema}
        )
        if "o-cancel" in params.message:
            return types.ElicitResult(action="cancel")
        if "o-no" in params.message:
            return types.ElicitResult(action="accept", content={"allow": False})
        return types.ElicitResult(action="accept", content={"allow": True})

    async with streamablehttp_client(url, headers=headers) as (read, write, session_id):
        async with ClientSession(read, write, elicitation_callback=ask_the_user) as s:
            await s.initialize()
            out["has_session"] = bool(session_id())
            out["accepted"] = seen(
                await s.call_tool(
                    "transfer", {"order": "o-yes", "card": "4111111111111111"}
                )
            )
            out["declined"] = seen(await s.call_tool("transfer", {"order": "o-no"}))
            out["cancelled"] = seen(await s.call_tool("transfer", {"order": "o-cancel"}))
            out["unasked"] = seen(await s.call_tool("echo", {"text": "plain"}))

    async with streamablehttp_client(url, headers=headers) as (read, write, session_id):
        async with ClientSession(read, write) as s:
            await s.initialize()
            out["plain_session"] = bool(session_id())
            out["cannot_ask"] = seen(await s.call_tool("transfer", {"order": "o-yes"}))

    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
