"""Tampers with a control plane's audit log directly in its SQLite file, as
someone with access to the disk would: reads {"db": path, "op": ...} from
stdin and prints JSON.

ops:
  {"op": "try"}                     an UPDATE and a DELETE through SQL;
                                    prints the errors the triggers raise
  {"op": "alter", "position": p}    changes the record at p
  {"op": "delete", "position": p}   removes the entry at p
  {"op": "swap", "a": a, "b": b}    exchanges the entries at a and b
  {"op": "restore", "rows": [...]}  puts rows back as "alter"/"delete"/
                                    "swap" printed them
Every op but "try" drops the append-only triggers first (an attacker with
the file can) and prints the rows it changed, for "restore".
"""

import json
import sqlite3
import sys

COLUMNS = "position, record, time_ms, kind, agent, session, tool, outcome"


def rows(c, positions):
    out = []
    for p in positions:
        r = c.execute(f"SELECT {COLUMNS} FROM audit_log WHERE position = ?", (p,)).fetchone()
        out.append([r[0], r[1].hex()] + list(r[2:]))
    return out


def put(c, r):
    c.execute("DELETE FROM audit_log WHERE position = ?", (r[0],))
    c.execute(
        f"INSERT INTO audit_log ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [r[0], bytes.fromhex(r[1])] + r[2:],
    )


def main() -> None:
    req = json.load(sys.stdin)
    c = sqlite3.connect(req["db"], timeout=10, isolation_level=None)
    op = req["op"]
    if op == "try":
        errors = []
        for sql in (
            "UPDATE audit_log SET record = x'00' WHERE position = 0",
            "DELETE FROM audit_log WHERE position = 0",
            "DELETE FROM audit_tree",
            "UPDATE audit_heads SET size = size + 1",
        ):
            try:
                c.execute(sql)
                errors.append(None)
            except sqlite3.DatabaseError as e:
                errors.append(str(e))
        print(json.dumps(errors))
        return
    c.execute("BEGIN IMMEDIATE")
    c.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    c.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    if op == "alter":
        old = rows(c, [req["position"]])
        rec = bytes.fromhex(old[0][1]).replace(b'"outcome":"', b'"outcome":"x', 1)
        c.execute("UPDATE audit_log SET record = ? WHERE position = ?", (rec, req["position"]))
    elif op == "delete":
        old = rows(c, [req["position"]])
        c.execute("DELETE FROM audit_log WHERE position = ?", (req["position"],))
    elif op == "swap":
        old = rows(c, [req["a"], req["b"]])
        a, b = old
        put(c, [a[0]] + b[1:])
        put(c, [b[0]] + a[1:])
    elif op == "restore":
        old = []
        for r in req["rows"]:
            put(c, r)
    else:
        raise SystemExit(f"unknown op {op}")
    c.execute("COMMIT")
    print(json.dumps(old))


if __name__ == "__main__":
    main()
