#!/usr/bin/env python3
"""Module dependency graph of each crate of the workspace, and the cycles in it.

Reads every `.rs` file of the core (`src/`) and of each server binding (`servers/*/src/`),
collects the paths it names (`crate::x`, `super::x`, `use crate::{a, b::c}` groups; comments,
strings and `#[cfg(test)]` modules ignored: tests may reach any layer), and reports per crate
the edges and cycles between its top-level modules (`lib` is the crate root's own items).

Exit status 1 if any cycle is found, so CI can run it. Usage:
    scripts/module-deps.py [--edges] [CRATE_SRC_DIR]
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Removes comments, string/char literals and `#[cfg(test)]` items."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or (c == "'" and text.startswith("'\\", i)):
            j = text.find("'", i + 2)
            i = j + 1
        else:
            out.append(c)
            i += 1
    code = "".join(out)
    # Drop `#[cfg(test)]` items (test modules and test-only functions).
    res, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < pos:
            continue
        res.append(code[pos:m.start()])
        j = m.end()
        # The item ends at its first top-level `;` or at its closing brace.
        depth, k = 0, j
        while k < len(code):
            ch = code[k]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    k += 1
                    break
            elif ch == ";" and depth == 0:
                k += 1
                break
            k += 1
        pos = k
    res.append(code[pos:])
    return "".join(res)


def group_heads(body):
    """The first path segment of each item of a `{a, b::c, d::{e}}` group."""
    heads, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and ch == ",":
            heads.append(cur)
            cur = ""
        elif depth == 0 or ch not in "{}":
            cur += ch if depth == 0 else ""
    heads.append(cur)
    return [m.group(0) for h in heads if (m := re.match(IDENT, h.strip()))]


def refs(code, prefix):
    """Names of the modules `code` reaches through `prefix::` (`crate` or `super`)."""
    names = set()
    for m in re.finditer(r"\b" + prefix + r"\s*::\s*(" + IDENT + r"|\{)", code):
        if m.group(1) != "{":
            names.add(m.group(1))
            continue
        depth, k = 1, m.end()
        while k < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[k], 0)
            k += 1
        names.update(group_heads(code[m.end():k - 1]))
    names.discard("self")
    return names


def cycles(nodes, edges):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def report(title, nodes, edges, show_edges):
    print(f"== {title}: {len(nodes)} modules, {sum(len(v) for v in edges.values())} edges")
    if show_edges:
        for a in sorted(edges):
            if edges[a]:
                print(f"  {a} -> {', '.join(sorted(edges[a]))}")
    found = cycles(nodes, edges)
    for comp in found:
        print("  CYCLE: " + " <-> ".join(comp))
        for a in comp:
            print(f"    {a} -> {', '.join(sorted(edges[a] & set(comp)))}")
    if not found:
        print("  no cycles")
    return bool(found)


# Crates whose cycles are reported but do not fail the run, and why (docs/adr/layers.md).
NOT_ENFORCED = {}


def crate_graph(src):
    """Modules of the crate rooted at `src` (its top-level files and folders) and their edges.

    `crate::x` is an edge to `x`; in a top-level file, `super::x` is an edge to the sibling `x`
    or, for an item of the crate root (lib.rs), to `lib`. The root names its modules directly
    (it declares them), so only its `self::`/`crate::` paths count.
    """
    edges = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src).split(os.sep)
            code = strip(open(path, encoding="utf-8").read())
            if rel[0] in ("lib.rs", "main.rs"):
                edges.setdefault("lib", set()).update(refs(code, "crate") | refs(code, "self"))
                continue
            mod = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
            deps = refs(code, "crate")
            if len(rel) == 1:
                deps |= refs(code, "super")
            edges.setdefault(mod, set()).update(d for d in deps if d != mod)
    nodes = set(edges)
    for a in edges:
        edges[a] = {d if d in nodes else "lib" for d in edges[a]} - {a}
    # The root declares every module: it is on top, not part of the layering below it.
    has_lib_items = any("lib" in e for a, e in edges.items() if a != "lib")
    if not has_lib_items:
        nodes.discard("lib")
        edges.pop("lib", None)
    return nodes, edges


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_edges = "--edges" in sys.argv
    top_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    crates = [args[0]] if args else [os.path.join(top_dir, "src")] + sorted(
        os.path.join(top_dir, "servers", d, "src") for d in os.listdir(os.path.join(top_dir, "servers"))
    )
    bad = False
    for src in crates:
        nodes, edges = crate_graph(src)
        name = os.path.relpath(src, top_dir)
        found = report(f"modules of {name}/", nodes, edges, show_edges)
        if found and name in NOT_ENFORCED:
            print(f"  (not failing the run: {NOT_ENFORCED[name]})")
            continue
        bad |= found
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
