"""An independent check of a Warden audit-log inclusion proof, with hashlib
only, as an outside auditor would write it from the README: reads the JSON
that `wardenctl audit prove` prints from stdin and prints `true` when the
record's leaf hash, RFC 9162 inclusion path and the head's root agree.
(The head's Ed25519 signature is checked by `wardenctl audit check`, or by
any Ed25519 library over the head message the README describes.)
"""

import json
import sys

from merkle_verify import inclusion, leaf


def main() -> None:
    p = json.load(sys.stdin)
    record = p["record"].encode("utf-8")
    h = leaf(record)
    if p.get("leaf_hash") and bytes.fromhex(p["leaf_hash"]) != h:
        print("false")
        return
    head = p["head"]
    ok = inclusion(
        h,
        p["position"],
        head["tree_size"],
        [bytes.fromhex(x) for x in p["path"]],
        bytes.fromhex(head["root_hash"]),
    )
    print("true" if ok else "false")


if __name__ == "__main__":
    main()
