"""An OpenID Connect provider for Warden's delegation tests, built with Authlib
(its Flask authorization server, the OpenID Connect code flow extension and
RFC 7636 PKCE) and joserfc keys: discovery, a JWK Set, a sign-in page, the
authorization endpoint and the token endpoint.

Usage: oidc_provider.py <client_id> <client_secret>

Prints "PORT <n>" once listening on 127.0.0.1. The client may redirect to any
loopback URL ending in /consent/callback, authenticates at the token endpoint
with client_secret_post, and must use PKCE (S256).

For the tests, besides the standard endpoints:
  POST /test/mint    JSON {"sub", optional "aud", "iss", "exp_in", "nbf_in",
                     "iat_in", "kid", "extra", "forge", "attack"} -> {"token"}:
                     an ID token as this provider signs them, or an attack
                     ("alg_none", "hs256_public_key") on one;
  POST /test/rotate  a new signing key, published first ({"kid"});
  GET  /test/stats   how often the JWK Set and discovery were read.

Users: any name signs in. alice is in groups engineering and oncall with tier
gold; bob is in sales with tier silver.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # loopback http only
import warnings  # noqa: E402

warnings.simplefilter("ignore")

from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import ClientMixin, grants  # noqa: E402
from authlib.oauth2.rfc7636 import CodeChallenge  # noqa: E402
from authlib.oidc.core import UserInfo  # noqa: E402
from authlib.oidc.core.grants import OpenIDCode  # noqa: E402
from authlib.oidc.core.models import AuthorizationCodeMixin  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from joserfc import jwt  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

# Authlib's notices about its own coming API changes are not the tests' concern.
warnings.filterwarnings("ignore", module="authlib")
warnings.filterwarnings("ignore", message=".*will become mandatory.*")

CLIENT_ID, CLIENT_SECRET = sys.argv[1], sys.argv[2]
PEOPLE = {
    "alice": {"groups": ["engineering", "oncall"], "tier": "gold"},
    "bob": {"groups": ["sales"], "tier": "silver"},
}

app = Flask(__name__)
app.secret_key = secrets.token_hex(16)
lock = threading.Lock()
state = {"issuer": "", "keys": [], "codes": {}, "nonces": set(), "jwks_reads": 0, "discovery_reads": 0}


def new_key():
    kid = "k-" + secrets.token_hex(4)
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


state["keys"].append(new_key())


class User:
    def __init__(self, name):
        self.name = name

    def get_user_id(self):
        return self.name


class Client(ClientMixin):
    def get_client_id(self):
        return CLIENT_ID

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        allowed = {"openid", "profile", "email"}
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri.startswith(("http://127.0.0.1:", "http://localhost:")) and redirect_uri.endswith(
            "/consent/callback"
        )

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret, CLIENT_SECRET)

    def check_endpoint_auth_method(self, method, endpoint):
        return endpoint != "token" or method == "client_secret_post"

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


CLIENT = Client()


class Code(AuthorizationCodeMixin):
    def __init__(self, code, user, req):
        self.code = code
        self.user = user
        self.redirect_uri = req.payload.redirect_uri
        self.scope = req.payload.scope
        self.nonce = req.payload.data.get("nonce")
        self.code_challenge = req.payload.data.get("code_challenge")
        self.code_challenge_method = req.payload.data.get("code_challenge_method")
        self.auth_time = int(time.time())
        self.expires = time.time() + 300

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_post"]

    def save_authorization_code(self, code, req):
        with lock:
            c = Code(code, req.user, req)
            state["codes"][code] = c
            if c.nonce:
                state["nonces"].add(c.nonce)

    def query_authorization_code(self, code, client):
        with lock:
            c = state["codes"].get(code)
        return c if c and c.expires > time.time() else None

    def delete_authorization_code(self, authorization_code):
        with lock:
            state["codes"].pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


class OpenID(OpenIDCode):
    def exists_nonce(self, nonce, req):
        with lock:
            return nonce in state["nonces"]

    def resolve_client_private_key(self, client):
        with lock:
            return state["keys"][0]

    def get_client_algorithm(self, client):
        return "RS256"

    def get_encode_header(self, client):
        with lock:
            return {"alg": "RS256", "kid": state["keys"][0].kid}

    def get_client_claims(self, client):
        return {"iss": state["issuer"], "aud": [CLIENT_ID]}

    def generate_user_info(self, user, scope):
        info = UserInfo(sub=user.name, name=user.name.title())
        if "email" in scope:
            info["email"] = f"{user.name}@example.com"
        info.update(PEOPLE.get(user.name, {}))
        return info


def query_client(client_id):
    return CLIENT if client_id == CLIENT_ID else None


def save_token(token, req):
    pass


server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
server.register_grant(CodeGrant, [OpenID(require_nonce=True), CodeChallenge(required=True)])


@app.get("/.well-known/openid-configuration")
def discovery():
    with lock:
        state["discovery_reads"] += 1
    iss = state["issuer"]
    return jsonify(
        issuer=iss,
        authorization_endpoint=iss + "/authorize",
        token_endpoint=iss + "/token",
        jwks_uri=iss + "/jwks",
        response_types_supported=["code"],
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=["RS256"],
        code_challenge_methods_supported=["S256"],
        token_endpoint_auth_methods_supported=["client_secret_post"],
        grant_types_supported=["authorization_code"],
        scopes_supported=["openid", "profile", "email"],
    )


@app.get("/jwks")
def jwks():
    with lock:
        state["jwks_reads"] += 1
        keys = [k.as_dict(private=False) for k in state["keys"]]
    return jsonify(keys=keys)


PAGE = """<!doctype html><html><head><title>Example IdP: sign in</title></head><body>
<h1>Sign in to the example identity provider</h1>
<form method="post" action="/authorize">{hidden}
<label>User name <input name="username" id="username" autocomplete="off"></label>
<button type="submit" id="signin">Sign in</button>
</form></body></html>"""


def esc(s):
    return (
        s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#39;")
    )


@app.route("/authorize", methods=["GET", "POST"])
def authorize():
    if request.method == "GET":
        try:
            server.get_consent_grant(end_user=None)
        except Exception as e:  # an invalid request is shown, never redirected
            return f"invalid authorization request: {esc(str(e))}", 400
        hidden = "".join(
            f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in request.args.items()
        )
        return PAGE.format(hidden=hidden)
    name = request.form.get("username", "").strip()
    if not name:
        return "a user name is needed", 400
    return server.create_authorization_response(grant_user=User(name))


@app.post("/token")
def token():
    return server.create_token_response()


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@app.post("/test/mint")
def mint():
    r = request.get_json()
    now = int(time.time())
    with lock:
        key = state["keys"][0]
    claims = {
        "iss": r.get("iss", state["issuer"]),
        "aud": r.get("aud", CLIENT_ID),
        "sub": r["sub"],
        "iat": now + r.get("iat_in", -5),
        "exp": now + r.get("exp_in", 600),
    }
    if "nbf_in" in r:
        claims["nbf"] = now + r["nbf_in"]
    if r["sub"]:
        claims["email"] = f'{r["sub"]}@example.com'
    claims.update(PEOPLE.get(r["sub"], {}))
    claims.update(r.get("extra", {}))
    claims = {k: v for k, v in claims.items() if v is not None}
    if r.get("forge"):
        key = RSAKey.generate_key(2048)
    kid = r.get("kid", state["keys"][0].kid)
    attack = r.get("attack")
    if attack == "alg_none":
        h = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        return jsonify(token=f"{h}.{b64(json.dumps(claims).encode())}.")
    if attack == "hs256_public_key":
        pem = (
            state["keys"][0]
            .public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        signing = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(
            json.dumps(claims).encode()
        )
        sig = hmac.new(pem, signing.encode(), hashlib.sha256).digest()
        return jsonify(token=signing + "." + b64(sig))
    return jsonify(token=jwt.encode({"alg": "RS256", "kid": kid, "typ": "JWT"}, claims, key))


@app.post("/test/rotate")
def rotate():
    # Read the body: werkzeug drains what an app leaves unread with a
    # blocking read that waits for the client to close.
    request.get_data()
    k = new_key()
    with lock:
        state["keys"].insert(0, k)
    return jsonify(kid=k.kid)


@app.get("/test/stats")
def stats():
    with lock:
        return jsonify(jwks_reads=state["jwks_reads"], discovery_reads=state["discovery_reads"])


logging.getLogger("werkzeug").setLevel(logging.ERROR)
srv = make_server("127.0.0.1", 0, app, threaded=True)
state["issuer"] = f"http://127.0.0.1:{srv.server_port}"
print(f"PORT {srv.server_port}", flush=True)
srv.serve_forever()
