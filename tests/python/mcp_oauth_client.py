"""An off-the-shelf MCP client -- the official Python SDK, unchanged -- that gets
its token the way the MCP authorization rules say: from the 401 challenge to
the protected resource metadata, to the authorization server it names, to its
token endpoint (OAuth client_credentials, with the SDK's own provider).

Usage: mcp_oauth_client.py URL CLIENT_ID CLIENT_SECRET CALLS_JSON
CALLS_JSON is a list of [tool, arguments]. Prints one JSON document with the
tools listed and what each call returned.
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
from mcp_seen import seen


class Memory(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


async def main(url, client_id, secret, calls):
    issuer = url.rsplit("/mcp", 1)[0]
    storage = Memory()
    auth = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=storage,
        client_id=client_id,
        client_secret=secret,
        issuer=issuer,
    )
    out = {"calls": []}
    async with streamablehttp_client(url, auth=auth) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["descriptions"] = {t.name: t.description for t in tools.tools}
            for name, args in calls:
                try:
                    out["calls"].append(seen(await session.call_tool(name, args)))
                except McpError as e:
                    out["calls"].append({"code": e.error.code, "data": e.error.data})
    out["token_type"] = storage.tokens.token_type if storage.tokens else None
    out["expires_in"] = storage.tokens.expires_in if storage.tokens else None
    out["scope"] = storage.tokens.scope if storage.tokens else None
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])))
