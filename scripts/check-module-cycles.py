#!/usr/bin/env python3
"""Fail if two modules of a crate import each other, directly or round a
longer loop (an import circle).

A module's imports are the paths it names: `use crate::a::b`, `use
super::x`, `use self::y` and qualified paths such as `crate::a::f()` in
code. Each is resolved to the deepest module of the crate it names (an
item inside `a::b` counts as an edge to `a::b`). Declaring a child
(`mod x;`) is not an import, but naming its items (`x::f`, `use x::T`)
is: the module tree is not a dependency. Test
modules (`#[cfg(test)] mod tests` and `tests.rs`) are left out: a test
may reach anything it checks.

Usage: scripts/check-module-cycles.py [CRATE_SRC_DIR ...]
(default: the src/ of every workspace crate). Exit 1 on a circle.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["engine", "hsm-sim", "se-sim", "provisioning", "loadgen", "cli", "audit", "sim", "pgvault"]

PATH_RE = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
REL_RE = re.compile(r"(?<![:\w])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_RE = re.compile(r"\buse\s+(crate|super|self)\s*::\s*(.*?);", re.S)
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_0-9]+)\s*;", re.M)


def strip_comments_and_strings(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_test_modules(text):
    """Remove `#[cfg(test)] mod name { ... }` blocks (brace matched)."""
    out = []
    i = 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth = 0
        j = m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    return "".join(out)


def module_files(src):
    """Map module path (tuple) -> file, following `mod x;` from lib/main."""
    mods = {}
    for top in ("lib.rs", "main.rs"):
        path = os.path.join(src, top)
        if os.path.exists(path):
            walk(src, path, (), mods, is_root=True)
    return mods


def walk(src, path, modpath, mods, is_root=False):
    if modpath in mods:
        return
    mods[modpath] = path
    text = strip_test_modules(strip_comments_and_strings(open(path).read()))
    if is_root or os.path.basename(path) == "mod.rs":
        base = os.path.dirname(path)
    else:
        base = os.path.join(os.path.dirname(path), os.path.basename(path)[:-3])
    for name in MOD_RE.findall(text):
        if name == "tests":
            continue
        for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
            if os.path.exists(cand):
                walk(src, cand, modpath + (name,), mods)
                break


def expand_use(tree):
    """`a::{b, c::d}` -> ['a::b', 'a::c::d'] (good enough for module paths)."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + q for q in expand_use(p)]
    return out


def resolve(head, rest, here, mods):
    """The deepest module named by `head::rest` written in module `here`."""
    if head == "crate":
        base = ()
    elif head == "self":
        base = here
    else:  # super (possibly repeated in rest)
        base = here[:-1]
    names = [n for n in rest.split("::") if n]
    while names and names[0] == "super":
        base = base[:-1]
        names.pop(0)
    best = base
    cur = base
    for n in names:
        cur = cur + (n,)
        if cur in mods:
            best = cur
        else:
            break
    return best


def edges_of(src):
    mods = module_files(src)
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        if os.path.basename(path) == "tests.rs":
            continue
        text = strip_test_modules(strip_comments_and_strings(open(path).read()))
        targets = []
        for head, tree in USE_RE.findall(text):
            if tree.lstrip().startswith("$"):
                continue  # a macro's `super::$name`: resolved where it expands
            for p in expand_use(tree):
                p = re.sub(r"\s+as\s+\w+$", "", p.strip())
                targets.append(resolve(head, "::" + p, m, mods))
        for head, rest in PATH_RE.findall(text):
            targets.append(resolve(head, rest, m, mods))
        # Relative paths: `child::item` (in a `use` or in code) names a
        # child module of this one.
        for child, rest in REL_RE.findall(text):
            if m + (child,) in mods:
                targets.append(resolve("self", "::" + child + rest, m, mods))
        for t in targets:
            # An edge to an ancestor is an import of that ancestor's own
            # items (re-exports included); to itself is nothing.
            if t != m:
                edges[m].add(t)
    return mods, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def name(crate, m):
    return crate + ("::" + "::".join(m) if m else "")


def main(argv):
    dirs = argv[1:] or [os.path.join(ROOT, c, "src") for c in CRATES]
    bad = 0
    for src in dirs:
        crate = os.path.basename(os.path.dirname(os.path.abspath(src)))
        mods, edges = edges_of(src)
        for comp in cycles(edges):
            bad += 1
            members = sorted(comp)
            print(f"import circle in {crate}: " + " <-> ".join(name(crate, m) for m in members))
            for a in members:
                for b in sorted(edges[a]):
                    if b in comp:
                        print(f"    {name(crate, a)} uses {name(crate, b)}")
        print(f"{crate}: {len(mods)} modules, {sum(len(e) for e in edges.values())} imports")
    if bad:
        print(f"{bad} import circle(s)")
        return 1
    print("no import circles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
