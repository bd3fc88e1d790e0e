"""Obtains Warden session tokens from the control plane's RFC 8693 token
endpoint with a third-party OAuth client (Authlib's requests OAuth2Session),
authenticated by the agent's certificate (mTLS, RFC 8705).

Reads {"url", "identity" (PEM: key and certificate), "ca", "client_id",
"cases": [{"name", "params", "mtls": true}]} on stdin; for each case calls
fetch_token with the token-exchange grant and `params`, and prints
{name: {"token": {...}} | {"error", "description", "status"}} as JSON.
"""

import json
import sys
import warnings

warnings.simplefilter("ignore")

from authlib.integrations.base_client.errors import OAuthError  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"

req = json.load(sys.stdin)
out = {}
for case in req["cases"]:
    s = OAuth2Session(client_id=req["client_id"], token_endpoint_auth_method="none")
    params = dict(case["params"])
    grant = params.pop("grant_type", GRANT)
    # Per request: requests lets REQUESTS_CA_BUNDLE override a session's verify.
    tls = {"verify": req["ca"]}
    if case.get("mtls", True):
        tls["cert"] = req["identity"]
    try:
        token = s.fetch_token(req["url"], grant_type=grant, **params, **tls)
        out[case["name"]] = {"token": dict(token)}
    except OAuthError as e:
        out[case["name"]] = {"error": e.error, "description": e.description}
print(json.dumps(out))
