"""What the MCP test clients report of a tool call's result."""


def seen(result):
    """is_error, the first text content, and Warden's refusal (if any)."""
    meta = result.meta or {}
    return {
        "is_error": bool(result.isError),
        "text": result.content[0].text if result.content else "",
        "refusal": meta.get("warden.dev/refusal"),
    }
