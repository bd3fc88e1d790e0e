"""An independent implementation of Warden's message envelope (README,
"Message envelope specification"), in Python's standard library only.

  verify_envelope.py --vector
      checks the README's test vector.
  verify_envelope.py --key HEX --envelope JSON
      verifies an envelope (JSON: the protobuf fields, bytes as hex) with the
      pair key; prints the sender and exits 0, or exits 1 if the MAC fails.
"""

import argparse
import hashlib
import hmac
import json
import struct
import sys


def l16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def pair_key(secret: bytes, sender: str, recipient: str, rotation_ms: int, epoch: int) -> bytes:
    msg = (b"warden-a2a-pair-v1" + l16(sender.encode()) + l16(recipient.encode())
           + struct.pack(">QQ", rotation_ms, epoch))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def signed_bytes(e: dict) -> bytes:
    return (b"warden-a2a-v1" + bytes([e["version"]])
            + l16(e["sender"].encode()) + l16(e["recipient"].encode())
            + struct.pack(">q", e["timestamp_ms"]) + e["nonce"]
            + struct.pack(">Q", e["key_id"]) + l16(e["content_type"].encode())
            + hashlib.sha256(e["payload"]).digest())


def mac(key: bytes, e: dict) -> bytes:
    return hmac.new(key, signed_bytes(e), hashlib.sha256).digest()


def vector() -> None:
    key = pair_key(bytes(range(32)), "spiffe://warden.local/agent/coder",
                   "spiffe://warden.local/agent/reviewer", 3600000, 493000)
    assert key.hex() == "1b295b763936bafb2f98d8f48924ab75bcdf7942b790a6a43ba5ec2e32203f29", key.hex()
    e = {"version": 1, "sender": "spiffe://warden.local/agent/coder",
         "recipient": "spiffe://warden.local/agent/reviewer", "timestamp_ms": 1774800000123,
         "nonce": bytes.fromhex("00112233445566778899aabbccddeeff"), "key_id": 493000,
         "content_type": "text/plain", "payload": b"please review PR 42"}
    got = mac(key, e).hex()
    assert got == "77cade915e411f015428ca8a43c5e3fab897f3bd1131f13d89364312a6ee2d86", got
    print("test vector OK")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vector", action="store_true")
    p.add_argument("--key")
    p.add_argument("--envelope")
    a = p.parse_args()
    if a.vector:
        vector()
        return 0
    e = json.loads(a.envelope)
    for f in ("nonce", "payload", "mac"):
        e[f] = bytes.fromhex(e[f])
    if not hmac.compare_digest(mac(bytes.fromhex(a.key), e), e["mac"]):
        print("MAC does not verify", file=sys.stderr)
        return 1
    print(e["sender"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
