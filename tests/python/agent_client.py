"""A Python agent using its sidecar, as agent developers do.

Generates the gRPC client from proto/ with grpcio-tools (no checked-in
stubs), connects to the sidecar's Unix socket, opens a session, calls WhoAmI
with the token, and checks that a call without the `warden-agent` header is
refused. Prints one JSON line and exits 0, or explains on stderr and exits 1.
"""

import argparse
import glob
import importlib.resources
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate(proto_dir: str) -> str:
    out = tempfile.mkdtemp(prefix="warden-stubs-")
    wkt = str(importlib.resources.files("grpc_tools") / "_proto")
    files = sorted(glob.glob(os.path.join(proto_dir, "warden/v1/*.proto")))
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--scope", action="append", required=True)
    args = ap.parse_args()
    generate(args.proto_dir)
    from warden.v1 import sidecar_pb2, sidecar_pb2_grpc  # noqa: E402  (generated above)

    # gRPC C-core sends the socket path as :authority, which HTTP/2 servers
    # built on hyper/h2 (the sidecar) refuse with PROTOCOL_ERROR; use the
    # "localhost" convention for Unix sockets.
    channel = grpc.insecure_channel(f"unix:{args.socket}", options=[("grpc.default_authority", "localhost")])
    stub = sidecar_pb2_grpc.AgentServiceStub(channel)
    header = [("warden-agent", "true")]
    session = stub.StartSession(sidecar_pb2.StartSessionRequest(scopes=args.scope, user_id="usr_py"), metadata=header, timeout=10)
    me = stub.WhoAmI(sidecar_pb2.WhoAmIRequest(), metadata=header + [("authorization", f"Bearer {session.token}")], timeout=10)
    try:
        stub.StartSession(sidecar_pb2.StartSessionRequest(scopes=args.scope), timeout=10)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "warden-agent" not in (e.details() or ""):
            print(f"unexpected refusal without the header: {e.code()} {e.details()}", file=sys.stderr)
            return 1
    else:
        print("a call without the warden-agent header was accepted", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "session_id": session.session_id, "scopes": list(session.scopes),
                      "agent_id": me.agent_id, "spiffe_id": me.spiffe_id, "user_id": me.user_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
