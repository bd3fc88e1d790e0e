#!/usr/bin/env python3
"""Imports in the sidecar run downward only: each top-level module may use
the modules of lower layers, never one of its own layer or above. Test files
(`tests.rs`, anything under a `tests/` folder) and the binary are exempt.

Usage: python3 .ci/layers.py [sidecar/src]   (exit 1 on an upward import)
"""
import pathlib
import re
import sys

# Lowest first. A module may import only from earlier lines.
LAYERS = [
    ["config"],
    ["infra", "identity", "policy"],
    ["state", "cp"],
    ["gateway"],
    ["mesh", "a2a"],
    ["api", "mcp"],
    ["health"],
    ["app"],
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}
# Crate-root helpers (lib.rs): anyone may use them.
ROOT_ITEMS = {"now_unix", "now_ms"}


def top_module(rel: pathlib.Path) -> str:
    return rel.parts[0].removesuffix(".rs")


def imported(text: str):
    for m in re.finditer(r"crate::\{([^}]*)\}", text):
        for part in m.group(1).split(","):
            name = part.strip().split("::")[0].strip()
            if name:
                yield name
    for m in re.finditer(r"crate::(\w+)", text):
        yield m.group(1)


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "sidecar/src")
    bad = []
    unknown = set()
    for f in sorted(root.rglob("*.rs")):
        rel = f.relative_to(root)
        if rel.name == "tests.rs" or "tests" in rel.parts[:-1] or rel.name in ("lib.rs", "main.rs"):
            continue
        me = top_module(rel)
        if me not in RANK:
            unknown.add(me)
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            for name in imported(line):
                if name in ROOT_ITEMS or name == me:
                    continue
                if name not in RANK:
                    unknown.add(name)
                elif RANK[name] >= RANK[me]:
                    bad.append(f"{root / rel}:{n}: {me} (layer {RANK[me]}) imports {name} (layer {RANK[name]})")
    for u in sorted(unknown):
        bad.append(f"module {u} has no layer in .ci/layers.py")
    for b in bad:
        print(b)
    if bad:
        print(f"{len(bad)} upward or unplaced import(s)")
        return 1
    print(f"no upward imports in {root} ({len(LAYERS)} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
