#!/usr/bin/env python3
"""Generate the bitsliced DES S-box circuits in
hsm-sim/src/primitives/bitslice/sboxes.rs from the FIPS 46-3 tables.

Each S-box output bit is a Boolean function of six inputs. We synthesise a
gate circuit for it (AND, OR, XOR, AND-NOT, NOT; no table lookups, so the
circuit is constant-time by construction) with a small dynamic programme:
for a function f and an input variable v, with cofactors f0 = f|v=0 and
f1 = f|v=1 and derivative d = f0 ^ f1,

    Shannon:         f = (f0 & !v) | (f1 & v)    3 gates + f0 + f1
    positive Davio:  f = f0 ^ (v & d)            2 gates + f0 + d
    negative Davio:  f = f1 ^ (!v & d)           2 gates + f1 + d

and the cheapest choice over every variable is kept. Functions of at most
three inputs are looked up in a table of their cheapest expression trees
(computed once by relaxation over one-gate compositions). The four outputs of
one S-box are then emitted together, so a sub-function they share (or its
complement) is computed once.

The circuits are ours (about twice the gate count of the hand-searched
circuits of Kwan or Rusakov); they are checked through whole DES blocks
against the `des` crate (`hsm-sim/src/primitives/bitslice/tests.rs`: the
FIPS known answer and a million random lanes, so every S-box sees every
input many times).

Usage: python3 scripts/gen-des-sboxes.py > hsm-sim/src/primitives/bitslice/sboxes.rs
"""
import functools
import sys

SBOXES = [
    [[14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7],
     [0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8],
     [4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0],
     [15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13]],
    [[15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10],
     [3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5],
     [0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15],
     [13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9]],
    [[10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8],
     [13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1],
     [13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7],
     [1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12]],
    [[7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15],
     [13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9],
     [10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4],
     [3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14]],
    [[2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9],
     [14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6],
     [4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14],
     [11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3]],
    [[12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11],
     [10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8],
     [9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6],
     [4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13]],
    [[4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1],
     [13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6],
     [1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2],
     [6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12]],
    [[13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7],
     [1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2],
     [7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8],
     [2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11]],
]

FULL = (1 << 64) - 1
# Truth table of input a(k+1) (k = 0..5): bit x is set when input x has it.
# Input x is the 6-bit S-box input a1..a6 with a1 the most significant.
VARS = []
for k in range(6):
    t = 0
    for x in range(64):
        if (x >> (5 - k)) & 1:
            t |= 1 << x
    VARS.append(t)


def output_table(box, bit):
    """Truth table of output bit `bit` (0 = out1, the most significant)."""
    t = 0
    for x in range(64):
        a1, a6 = (x >> 5) & 1, x & 1
        col = (x >> 1) & 0xF
        if (box[a1 * 2 + a6][col] >> (3 - bit)) & 1:
            t |= 1 << x
    return t


def cofactors(f, k):
    """(f|a_k=0, f|a_k=1) as functions of all six inputs."""
    shift = 5 - k
    f0 = f1 = 0
    for x in range(64):
        bit = 1 << shift
        if (f >> (x & ~bit)) & 1:
            f0 |= 1 << x
        if (f >> (x | bit)) & 1:
            f1 |= 1 << x
    return f0, f1


def support(f):
    return [k for k in range(6) if cofactors(f, k)[0] != cofactors(f, k)[1]]


def _three_var_table():
    """Cheapest expression tree for each of the 256 functions of three
    inputs x0, x1, x2 (bit i of the table: value at x0 x1 x2 = i, x0 the
    most significant), by relaxation over the one-gate compositions."""
    atoms = {0b11110000: ("x", 0), 0b11001100: ("x", 1), 0b10101010: ("x", 2)}
    best3 = {0: (0, ("zero",)), 0xFF: (0, ("ones",))}
    for t, e in atoms.items():
        best3[t] = (0, e)
    changed = True
    while changed:
        changed = False
        items = list(best3.items())
        for ta, (ca, ea) in items:
            cand = [((~ta) & 0xFF, ca + 1, ("not", ea))]
            for tb, (cb, eb) in items:
                c = ca + cb + 1
                cand += [
                    (ta & tb, c, ("and", ea, eb)),
                    (ta | tb, c, ("or", ea, eb)),
                    (ta ^ tb, c, ("xor", ea, eb)),
                    (ta & ~tb & 0xFF, c, ("andnot", ea, eb)),
                ]
            for t, c, e in cand:
                if t not in best3 or c < best3[t][0]:
                    best3[t] = (c, e)
                    changed = True
    return best3


BEST3 = _three_var_table()


def _instantiate(e, sup):
    if e[0] == "x":
        return ("var", sup[e[1]])
    if e[0] in ("zero", "ones"):
        return e
    return (e[0],) + tuple(_instantiate(x, sup) for x in e[1:])


def leaf_forms(f):
    """Cheapest tree for a function of at most three inputs: (cost, expr)."""
    if f == 0:
        return (0, ("zero",))
    if f == FULL:
        return (0, ("ones",))
    sup = support(f)
    if len(sup) > 3:
        return None
    sup = (sup + [k for k in range(6) if k not in sup])[:3]
    # Project f onto its (up to) three inputs.
    t = 0
    for i in range(8):
        x = 0
        for j, k in enumerate(sup):
            if (i >> (2 - j)) & 1:
                x |= 1 << (5 - k)
        if (f >> x) & 1:
            t |= 1 << i
    cost, e = BEST3[t]
    return (cost, _instantiate(e, sup))


def shannon_gates(f0, f1):
    """Gates of (f0 & !v) | (f1 & v) once constant operands fold away."""
    if f0 in (0, FULL) or f1 in (0, FULL):
        return 1  # f1 & v, f0 & !v, f1 | !v (as !(v & !f1) costs more: see emit), f0 | v
    return 3


def davio_gates(base, d):
    """Gates of base ^ (v & d) once constant operands fold away."""
    if d == FULL:
        return 1  # base ^ v
    if base == 0:
        return 1  # v & d
    return 2


@functools.lru_cache(maxsize=None)
def best(f):
    """(cost, plan) of the cheapest tree for f."""
    leaf = leaf_forms(f)
    if leaf is not None:
        return leaf
    options = []
    for k in support(f):
        f0, f1 = cofactors(f, k)
        d = f0 ^ f1
        v = ("var", k)
        c0, c1, cd = best(f0)[0], best(f1)[0], best(d)[0]
        options.append((c0 + c1 + shannon_gates(f0, f1), ("shannon", v, f0, f1)))
        options.append((c0 + cd + davio_gates(f0, d), ("pdavio", v, f0, d)))
        options.append((c1 + cd + davio_gates(f1, d), ("ndavio", v, f1, d)))
    return min(options, key=lambda o: o[0])


class Emitter:
    """SSA emission with sharing by truth table."""

    def __init__(self):
        self.lines = []
        self.names = {VARS[k]: f"a{k + 1}" for k in range(6)}
        self.count = 0
        self.gates = 0

    def new(self, expr, table):
        self.count += 1
        name = f"x{self.count}"
        self.lines.append(f"    let {name} = {expr};")
        self.names[table] = name
        return name

    def atom(self, e):
        kind = e[0]
        if kind == "var":
            return f"a{e[1] + 1}", VARS[e[1]]
        raise ValueError(e)

    def expr(self, e):
        """Emit a leaf expression tree; returns (name, table)."""
        kind = e[0]
        if kind == "zero":
            return "W::ZERO", 0
        if kind == "ones":
            return "W::ONES", FULL
        if kind == "var":
            return self.atom(e)
        if kind == "not":
            n, t = self.expr(e[1])
            t = FULL ^ t
            if t in self.names:
                return self.names[t], t
            self.gates += 1
            return self.new(f"!{n}", t), t
        (na, ta), (nb, tb) = self.expr(e[1]), self.expr(e[2])
        t, code = {
            "and": (ta & tb, f"{na} & {nb}"),
            "or": (ta | tb, f"{na} | {nb}"),
            "xor": (ta ^ tb, f"{na} ^ {nb}"),
            "andnot": (ta & ~tb & FULL, f"{na}.and_not({nb})"),
        }[kind]
        if t in self.names:
            return self.names[t], t
        self.gates += 1
        return self.new(code, t), t

    def build(self, f):
        if f in self.names:
            return self.names[f]
        if f == 0:
            return "W::ZERO"
        if f == FULL:
            return "W::ONES"
        if (FULL ^ f) in self.names:
            self.gates += 1
            return self.new(f"!{self.names[FULL ^ f]}", f)
        _, plan = best(f)
        kind = plan[0]
        if kind not in ("shannon", "pdavio", "ndavio"):
            return self.expr(plan)[0]
        k = plan[1][1]
        v = f"a{k + 1}"
        if kind == "shannon":
            f0, f1 = plan[2], plan[3]
            if f0 == 0:
                return self.gate(f"{self.build(f1)} & {v}", f)
            if f1 == 0:
                return self.gate(f"{self.build(f0)}.and_not({v})", f)
            if f1 == FULL:
                return self.gate(f"{self.build(f0)} | {v}", f)
            if f0 == FULL:
                # f1 | !v: one gate on AVX-512 (ternary logic), two elsewhere.
                nv = self.build(FULL ^ VARS[k])
                return self.gate(f"{self.build(f1)} | {nv}", f)
            n0, n1 = self.build(f0), self.build(f1)
            self.gates += 2
            return self.gate(f"{n0}.and_not({v}) | ({n1} & {v})", f)
        base, d = plan[2], plan[3]
        if kind == "pdavio":
            if d == FULL:
                return self.gate(f"{self.build(base)} ^ {v}", f)
            if base == 0:
                return self.gate(f"{self.build(d)} & {v}", f)
            nb, nd = self.build(base), self.build(d)
            self.gates += 1
            return self.gate(f"{nb} ^ ({nd} & {v})", f)
        if d == FULL:
            nv = self.build(FULL ^ VARS[k])
            return self.gate(f"{self.build(base)} ^ {nv}", f)
        if base == 0:
            return self.gate(f"{self.build(d)}.and_not({v})", f)
        nb, nd = self.build(base), self.build(d)
        self.gates += 1
        return self.gate(f"{nb} ^ {nd}.and_not({v})", f)

    def gate(self, code, table):
        self.gates += 1
        return self.new(code, table)


def main():
    out = []
    out.append("//! The eight DES S-boxes as gate circuits over bitsliced words.")
    out.append("//!")
    out.append("//! GENERATED by `scripts/gen-des-sboxes.py` from the FIPS 46-3 tables;")
    out.append("//! do not edit by hand. Inputs `a1..a6` are the six S-box input bits")
    out.append("//! (`a1` the most significant), outputs the four output bits (`out[0]`")
    out.append("//! the most significant). Gate counts per S-box are in each doc comment.")
    out.append("")
    out.append("use super::word::Word;")
    total = 0
    for i, box in enumerate(SBOXES):
        em = Emitter()
        outs = [em.build(output_table(box, b)) for b in range(4)]
        total += em.gates
        out.append("")
        out.append(f"/// S{i + 1}: {em.gates} gates.")
        out.append("#[inline(always)]")
        out.append("#[allow(clippy::many_single_char_names)]")
        out.append(f"pub(super) fn s{i + 1}<W: Word>([a1, a2, a3, a4, a5, a6]: [W; 6]) -> [W; 4] {{")
        out.append("    let _ = (a1, a2, a3, a4, a5, a6);")
        out.extend(em.lines)
        out.append(f"    [{', '.join(outs)}]")
        out.append("}")
    print("\n".join(out))
    print(f"total gates {total}, average {total / 8:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
