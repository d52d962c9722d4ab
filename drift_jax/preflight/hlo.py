"""Reads a compiled program's HLO text: its computations, who calls whom, and how often each one runs.

XLA's `cost_analysis()` counts a while loop's body once whatever its trip count, and the model scans
over layers (and the train step over micro-batches), so its totals are a fraction of a step's. Here
every computation is weighted by how often it runs: a loop body by its trip count (from the counter's
start, step and the bound its condition compares it with), a fusion or call by its callers. What each
computation costs (FLOPs, HBM bytes, collectives) is `hlo_costs.py`.
"""

from __future__ import annotations

import re
from collections import defaultdict

from drift_jax.preflight import hlo_costs

_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\((.*)\)\s+->\s+(.*)\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s+=\s+(.*)$")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|called_computations)="
                      r"(\{[^}]*\}|%?[\w.\-]+)")


def _split_instr(rest: str) -> tuple[str, str, str, str]:
    """'TYPE opcode(OPERANDS), attrs' -> (type, opcode, operands, attrs); TYPE may be a nested tuple."""
    depth = 0
    for i, c in enumerate(rest):  # the type ends at the first space outside brackets
        depth += (c in "([{") - (c in ")]}")
        if c == " " and depth == 0:
            break
    else:
        return rest, "", "", ""
    shape, tail = rest[:i], rest[i + 1:]
    m = re.match(r"([\w\-]+)\(", tail)
    if not m:
        return shape, tail.split(" ")[0], "", ""
    depth = 0
    for j in range(m.end() - 1, len(tail)):
        depth += (tail[j] == "(") - (tail[j] == ")")
        if depth == 0:
            break
    return shape, m.group(1), tail[m.end():j], tail[j + 1:]


class Program(hlo_costs.CostModel):
    """A compiled HLO module: its computations and who calls whom; its costs are `hlo_costs.CostModel`'s."""

    def __init__(self, text: str):
        self.computations: dict[str, list[hlo_costs.Instr]] = {}
        self.entry = ""
        current: list[hlo_costs.Instr] | None = None
        for line in text.splitlines():
            header = _HEADER.match(line)
            if header and not line.startswith(" "):
                current = self.computations.setdefault(header.group(2), [])
                self.entry = header.group(2) if header.group(1) else self.entry
                continue
            m = _INSTR.match(line)
            if m and current is not None:
                shape, opcode, operands, attrs = _split_instr(m.group(3))
                callees = [(kind, n.strip().lstrip("%")) for kind, names in _CALLEES.findall(attrs)
                           for n in names.strip("{}").split(",") if n.strip()]
                current.append(hlo_costs.Instr(m.group(2), shape, opcode,
                                               re.findall(r"%([\w.\-]+)", operands), operands, attrs, callees))
        # Computations inside fusions are costed at their fusion (their values stay on chip).
        self.fused = {c for instrs in self.computations.values() for i in instrs if i.opcode == "fusion"
                      for _, c in i.callees}
        self.shapes = {c: {i.name: i.shape for i in instrs} for c, instrs in self.computations.items()}

    # ------------------------------------------------------------------------- structure

    def trip_count(self, comp: str, loop: hlo_costs.Instr) -> int:
        """Trips of a counted while loop in `comp`: (bound - start) / step of the counter its condition
        compares (`i < N`), as the loop's initial tuple and its body's `i + step` give them. Loops
        of another shape (the sampler's: a bound or all rows done) count their bound."""
        callees = dict(loop.callees)
        cond, body = callees["condition"], callees["body"]
        index, bound = None, None
        named = {i.name: i for i in self.computations.get(cond, [])}
        for ins in self.computations.get(cond, []):
            if ins.opcode == "compare" and "direction=LT" in ins.attrs and len(ins.operands) == 2:
                lhs, rhs = (named.get(o) for o in ins.operands)
                if lhs is not None and rhs is not None and lhs.opcode == "get-tuple-element" \
                        and _int_constant(rhs) is not None:
                    index, bound = int(re.search(r"index=(\d+)", lhs.attrs).group(1)), _int_constant(rhs)
        if index is None:
            consts = [_int_constant(i) for c in self.reachable(cond) for i in self.computations.get(c, [])]
            return max([c for c in consts if c is not None], default=1)
        step = start = None
        instrs = {i.name: i for i in self.computations.get(body, [])}
        root = self.computations[body][-1] if self.computations.get(body) else None
        if root is not None and root.opcode == "tuple" and index < len(root.operands):
            update = instrs.get(root.operands[index])
            if update is not None and update.opcode == "add":
                steps = [_int_constant(instrs[o]) for o in update.operands if o in instrs]
                step = next((c for c in steps if c is not None), None)
        caller = {i.name: i for i in self.computations[comp]}
        init = caller.get(loop.operands[0]) if loop.operands else None
        if init is not None and init.opcode == "tuple" and index < len(init.operands):
            start = _int_constant(caller[init.operands[index]]) if init.operands[index] in caller else None
        return max(1, -(-(bound - (start or 0)) // (step or 1)))

    def reachable(self, comp: str) -> set[str]:
        seen, stack = set(), [comp]
        while stack:
            c = stack.pop()
            if c not in seen:
                seen.add(c)
                stack += [callee for i in self.computations.get(c, []) for _, callee in i.callees]
        return seen

    def loops(self, comp: str | None = None) -> list[tuple[str, int]]:
        """(body, trip count) of the while loops `comp` (default: the entry) runs directly."""
        out = []
        for ins in self.computations[comp or self.entry]:
            if ins.opcode == "while":
                d = dict(ins.callees)
                out.append((d["body"], self.trip_count(comp or self.entry, ins)))
        return out

    def multiplicities(self, root: str | None = None, loop_trips: bool = True) -> dict[str, float]:
        """How many times each computation runs per run of `root` (default: the entry); with
        `loop_trips=False` every loop body counts once, as cost_analysis() does."""
        mult: dict[str, float] = defaultdict(float)

        def visit(comp: str, times: float) -> None:
            mult[comp] += times
            for ins in self.computations.get(comp, []):
                trips = 1
                if ins.opcode == "while" and loop_trips:
                    trips = self.trip_count(comp, ins)
                for kind, callee in ins.callees:
                    if kind == "to_apply" and ins.opcode not in ("call", "conditional"):
                        continue  # reducers and scatter combiners: costed with their op
                    visit(callee, times * trips)

        visit(root or self.entry, 1.0)
        return mult


def _int_constant(ins: hlo_costs.Instr) -> int | None:
    if ins.opcode != "constant" or not re.match(r"[su](32|64)\[\]", ins.shape):
        return None
    return int(ins.args) if re.fullmatch(r"-?\d+", ins.args.strip()) else None
