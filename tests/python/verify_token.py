"""Independent interop check for Warden access tokens and SVID certificates.

Verifies an ES256 "at+jwt" access token against a JWKS endpoint with PyJWT,
checks its certificate binding (RFC 8705 cnf.x5t#S256) against a PEM X.509
certificate read with `cryptography`, checks the certificate's single SPIFFE
URI SAN, and checks that a tampered token is rejected. Prints one JSON line and
exits 0 on success; prints the reason to stderr and exits 1 on any failure.
"""

import argparse
import base64
import hashlib
import json
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class CheckError(Exception):
    pass


def tamper(token: str) -> str:
    """Flip one base64url character in the middle of the payload segment."""
    header, payload, signature = token.split(".")
    if len(payload) < 3:
        raise CheckError("token payload segment is too short to tamper with")
    i = len(payload) // 2
    c = payload[i]
    new = B64URL[(B64URL.index(c) + 1) % len(B64URL)] if c in B64URL else "A"
    return ".".join([header, payload[:i] + new + payload[i + 1:], signature])


def run(args: argparse.Namespace) -> dict:
    header = jwt.get_unverified_header(args.token)
    if header.get("alg") != "ES256" or header.get("typ") != "at+jwt" or not header.get("kid"):
        raise CheckError(f"unexpected JOSE header: {header}")
    key = jwt.PyJWKClient(args.jwks_url).get_signing_key_from_jwt(args.token)

    def decode(tok: str) -> dict:
        return jwt.decode(
            tok, key.key, algorithms=["ES256"], audience=args.audience, issuer=args.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})

    claims = decode(args.token)
    for name in ("client_id", "scope", "sid"):
        if name not in claims:
            raise CheckError(f"token is missing claim {name!r}")
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict) or cnf.get("x5t#S256") != args.expect_thumbprint:
        raise CheckError(f"cnf claim {cnf!r} does not bind thumbprint {args.expect_thumbprint}")

    with open(args.cert, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or uris[0] != args.expect_spiffe_id:
        raise CheckError(f"certificate URI SANs {uris} != [{args.expect_spiffe_id!r}]")
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    thumbprint = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    if thumbprint != args.expect_thumbprint:
        raise CheckError(f"certificate x5t#S256 {thumbprint} != {args.expect_thumbprint}")

    try:
        decode(tamper(args.token))
    except (jwt.InvalidSignatureError, jwt.DecodeError):
        pass
    else:
        raise CheckError("tampered token was accepted")

    return {"ok": True, "sub": claims["sub"], "client_id": claims["client_id"],
            "scope": claims["scope"], "spiffe_id": uris[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--jwks-url", "--token", "--issuer", "--audience", "--cert",
                 "--expect-spiffe-id", "--expect-thumbprint"):
        p.add_argument(flag, required=True)
    args = p.parse_args()
    try:
        result = run(args)
    except Exception as e:  # any failure, including PyJWT and cryptography errors
        print(f"verify_token: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
