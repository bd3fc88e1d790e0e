"""User ID tokens as an OpenID Connect provider signs them, made with PyJWT and
cryptography, for Warden's user-token verifier to judge.

Reads {"issuer", "audience", "now"} as JSON on stdin; prints {"jwks": <the
provider's JWK Set>, "tokens": {name: token}}: good tokens (RS256, PS256,
ES256, EdDSA, an audience list) and attacks (a forged signature, expired, not
yet valid, another audience, another issuer, alg none, HS256 keyed with the
provider's public key, an unknown kid, no subject).
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

req = json.load(sys.stdin)
iss, aud, now = req["issuer"], req["audience"], int(req["now"])

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()
attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(alg_cls, key, kid):
    j = json.loads(alg_cls.to_jwk(key.public_key()))
    j["kid"] = kid
    j["use"] = "sig"
    return j


jwks = {
    "keys": [
        jwk(RSAAlgorithm, rsa_key, "rsa-1"),
        jwk(ECAlgorithm, ec_key, "ec-1"),
        jwk(OKPAlgorithm, ed_key, "ed-1"),
    ]
}


def claims(**over):
    c = {"iss": iss, "aud": aud, "sub": "alice", "iat": now - 10, "exp": now + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(c, key, alg, kid):
    return jwt.encode(c, key, algorithm=alg, headers={"kid": kid})


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unsigned(header, c, sig=b""):
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(c).encode())
    return f"{h}.{p}.{b64(sig)}"


public_pem = rsa_key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
hs_header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
hs_signing_input = (
    b64(json.dumps(hs_header).encode()) + "." + b64(json.dumps(claims()).encode())
)
hs_sig = hmac.new(public_pem, hs_signing_input.encode(), hashlib.sha256).digest()

tokens = {
    "rs256": sign(claims(), rsa_key, "RS256", "rsa-1"),
    "ps256": sign(claims(), rsa_key, "PS256", "rsa-1"),
    "es256": sign(claims(sub="bob"), ec_key, "ES256", "ec-1"),
    "eddsa": sign(claims(), ed_key, "EdDSA", "ed-1"),
    "aud_list": sign(claims(aud=["another-app", aud]), rsa_key, "RS256", "rsa-1"),
    "forged": sign(claims(sub="mallory"), attacker, "RS256", "rsa-1"),
    "expired": sign(claims(iat=now - 7200, exp=now - 3600), rsa_key, "RS256", "rsa-1"),
    "not_yet": sign(claims(nbf=now + 3600), rsa_key, "RS256", "rsa-1"),
    "wrong_aud": sign(claims(aud="another-app"), rsa_key, "RS256", "rsa-1"),
    "wrong_iss": sign(claims(iss="https://evil.example"), rsa_key, "RS256", "rsa-1"),
    "alg_none": unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "hs256_public_key": hs_signing_input + "." + b64(hs_sig),
    "unknown_kid": sign(claims(), rsa_key, "RS256", "rsa-2"),
    "no_sub": sign(claims(sub=None), rsa_key, "RS256", "rsa-1"),
    "es256_with_rsa_kid": sign(claims(), ec_key, "ES256", "rsa-1"),
}
print(json.dumps({"jwks": jwks, "tokens": tokens}))
