"""An independent check of RFC 9162 Merkle proofs, with hashlib only (no
Warden code): reads JSON from stdin, {"inclusion": [{"entry": hex, "index",
"size", "proof": [hex], "root": hex}], "consistency": [{"old", "new",
"old_root", "new_root", "proof": [hex]}]}, and prints a JSON list of
booleans, inclusion checks first.
"""

import hashlib
import json
import sys


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def inclusion(leaf_hash, index, size, proof, root):
    # RFC 9162, 2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency(first, second, first_root, second_root, proof):
    # RFC 9162, 2.1.4.2
    if first == 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def main() -> None:
    given = json.load(sys.stdin)
    h = bytes.fromhex
    out = []
    for c in given["inclusion"]:
        out.append(
            inclusion(
                leaf(h(c["entry"])),
                c["index"],
                c["size"],
                [h(p) for p in c["proof"]],
                h(c["root"]),
            )
        )
    for c in given["consistency"]:
        out.append(
            consistency(
                c["old"], c["new"], h(c["old_root"]), h(c["new_root"]),
                [h(p) for p in c["proof"]],
            )
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
