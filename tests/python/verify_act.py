"""Checks a delegated Warden session token with PyJWT, independently of Warden:
the ES256 signature against the control plane's JWK Set, the audience, and the
RFC 8693 act claim.

Reads {"token", "jwks" (the JWK Set's JSON text), "audience"} on stdin; prints
{"sub", "act", "client_id", "scope"} of the verified token.
"""

import json
import sys

import jwt

req = json.load(sys.stdin)
header = jwt.get_unverified_header(req["token"])
keys = jwt.PyJWKSet.from_json(req["jwks"])
key = next(k for k in keys.keys if k.key_id == header["kid"])
claims = jwt.decode(
    req["token"],
    key.key,
    algorithms=["ES256"],
    audience=req["audience"],
    options={"require": ["exp", "iat", "iss", "aud", "sub"]},
)
act = claims.get("act")
if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
    sys.exit(f"no RFC 8693 act claim: {act!r}")
print(json.dumps({k: claims.get(k) for k in ("sub", "act", "client_id", "scope")}))
