"""Two Python agents exchanging a message through their sidecars.

Generates the gRPC client from proto/ (as agent_client.py does). The sender
opens a session at its sidecar's Unix socket and signs a message for the
recipient; the recipient opens a session at its own sidecar's socket and
verifies the envelope, once (accepted) and again (refused as a replay).
Prints one JSON line and exits 0, or explains on stderr and exits 1.
"""

import argparse
import json
import sys

import grpc

from agent_client import generate


def session(socket: str):
    from warden.v1 import a2a_pb2_grpc, sidecar_pb2, sidecar_pb2_grpc  # noqa: E402

    # Over a Unix socket, set the authority (see agent_client.py).
    channel = grpc.insecure_channel(f"unix:{socket}", options=[("grpc.default_authority", "localhost")])
    hdr = [("warden-agent", "true")]
    s = sidecar_pb2_grpc.AgentServiceStub(channel).StartSession(
        sidecar_pb2.StartSessionRequest(scopes=["data:read"]), metadata=hdr, timeout=10)
    return a2a_pb2_grpc.MessagingServiceStub(channel), hdr + [("authorization", f"Bearer {s.token}")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--sender-socket", required=True)
    ap.add_argument("--recipient-socket", required=True)
    ap.add_argument("--recipient", required=True)
    args = ap.parse_args()
    generate(args.proto_dir)
    from warden.v1 import a2a_pb2  # noqa: E402  (generated above)

    sender, sender_auth = session(args.sender_socket)
    recipient, recipient_auth = session(args.recipient_socket)
    envelope = sender.SignMessage(a2a_pb2.SignMessageRequest(
        recipient_agent=args.recipient, payload=b'{"task": "review PR 42"}', content_type="application/json"),
        metadata=sender_auth, timeout=10).envelope
    # The envelope travels over the agents' own channel, then:
    verified = recipient.VerifyMessage(a2a_pb2.VerifyMessageRequest(envelope=envelope),
                                       metadata=recipient_auth, timeout=10).message
    try:
        recipient.VerifyMessage(a2a_pb2.VerifyMessageRequest(envelope=envelope), metadata=recipient_auth, timeout=10)
    except grpc.RpcError as e:
        replay = e.code().name
    else:
        print("a replayed envelope was accepted", file=sys.stderr)
        return 1
    print(json.dumps({"sender": verified.sender_agent_id, "payload": verified.payload.decode(),
                      "checks": list(verified.checks), "replay": replay}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
