"""What a parsed HLO program costs per run: its FLOPs, HBM bytes and collectives, loop trips counted.

The cost model follows XLA's HloCostAnalysis: a dot or convolution is 2 x output elements x the
contracted size (kernel taps that land on padding or dilation holes excluded), an elementwise op one FLOP per
element, and HBM bytes are the operands and outputs of each top-level instruction. At one trip per
loop its FLOPs match cost_analysis() on TPU to <0.01%. Its bytes are those the program moves: a fusion
that slices one layer out of a stacked [layers, ...] operand inside an inner fusion reads that slice,
an in-place update (dynamic-update-slice or scatter) writes its update and does not read its buffer, and
arrays the TPU compiler placed in VMEM (memory space S(1)) move no HBM bytes. XLA's TPU model counts the whole
stack in a scanned train step (`xla_model=True` reproduces it there to <0.01%: bytes that grew with the
square of the layers once trips are counted) but the slice in decode's unrolled layers. Collectives are
identified by channel id: the TPU compiler splits one all-gather over several async fusions that all
print it. Each computation is weighted by how often it runs (`hlo.Program.multiplicities`).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np


@dataclasses.dataclass
class Instr:
    """One HLO instruction as `hlo.Program` parses it."""

    name: str
    shape: str  # the result type
    opcode: str
    operands: list[str]
    args: str  # the text inside the parentheses (a constant's value)
    attrs: str
    callees: list[tuple[str, str]]  # (attribute, computation)


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
                "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
                "f8e4m3fn": 1, "f8e5m2": 1, "token": 0}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
# An array with its layout: `bf16[16,3152,2,128]{3,2,1,0:T(2,128)(2,1)S(1)}`; S(n), n > 0, is a memory
# space other than HBM (the TPU compiler's memory-space assignment puts buffers in VMEM, S(1), and
# semaphores in SMEM, S(2)).
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\](\{[^}]*\})?")
# Opcodes that move no HBM data of their own (views, tuples, control flow whose bodies are costed).
_NO_BYTES = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "while", "conditional",
             "call", "after-all", "partition-id", "replica-id", "iota", "add-dependency", "opt-barrier"}
_SLICING = {"slice", "dynamic-slice", "gather"}
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "sign",
                "compare", "select", "and", "or", "xor", "not", "clamp", "remainder", "power", "floor",
                "ceil", "round-nearest-even", "round-nearest-afz", "convert"}
_TRANSCENDENTAL = {"exponential", "log", "tanh", "rsqrt", "sqrt", "logistic", "sine", "cosine",
                   "exponential-minus-one", "log-plus-one", "atan2", "erf", "cbrt", "tan"}


def shape_bytes(text: str) -> int:
    """Bytes of every array shape written in `text` (a tuple's elements summed)."""
    return int(sum(_DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                   for t, dims in _SHAPE.findall(text)))


def hbm_arrays(text: str) -> list[float]:
    """Bytes of each array written in `text` that lives in HBM (0 for one in another memory space)."""
    return [0.0 if layout and re.search(r"S\([1-9]\d*\)", layout) else
            _DTYPE_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
            for t, dims, layout in _ARRAY.findall(text)]


def _hbm_share(text: str) -> float:
    """The share of an operand's bytes in HBM (1 or 0 for an array; a tuple may be split)."""
    total = shape_bytes(text)
    return sum(hbm_arrays(text)) / total if total else 1.0


def _dims(text: str) -> list[int]:
    m = _SHAPE.search(text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclasses.dataclass(frozen=True)
class Collective:
    opcode: str  # all-gather, all-reduce, ... ("-start" dropped)
    bytes: int  # the larger of its operand and result buffers, per chip
    group_size: int
    times: float  # per call of the program (loop bodies x trips)


class CostModel:
    """The costs of `hlo.Program`, which mixes this in: they read its parsed computations and weight each
    by how often it runs (`multiplicities`)."""

    computations: dict[str, list[Instr]]
    shapes: dict[str, dict[str, str]]
    fused: set[str]

    # ------------------------------------------------------------------------- costs

    def _flops(self, comp: str, ins: Instr) -> tuple[float, float]:
        """(flops, transcendentals) of one instruction, a fusion's including its computation's."""
        out = _dims(ins.shape)
        n_out = math.prod(out) if out else 1
        flops = trans = 0.0
        if ins.opcode == "dot" and ins.operands:
            lhs = _dims(self.shapes[comp].get(ins.operands[0], ""))
            m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
            flops = 2.0 * n_out * (math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1)
        elif ins.opcode == "convolution" and len(ins.operands) > 1:
            lhs = _dims(self.shapes[comp].get(ins.operands[0], ""))
            rhs = _dims(self.shapes[comp].get(ins.operands[1], ""))
            labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
            if labels and lhs and rhs:
                flops = 2.0 * n_out * _conv_contraction(labels.groups(), lhs, rhs, out, ins.attrs)
        elif ins.opcode in _ELEMENTWISE:
            flops = float(n_out)
        elif ins.opcode in _TRANSCENDENTAL:
            trans = float(n_out)
        elif ins.opcode in ("reduce", "reduce-window") and ins.operands:
            flops = float(math.prod(_dims(self.shapes[comp].get(ins.operands[0], ""))) or n_out)
        if ins.opcode == "fusion":
            for _, callee in ins.callees:
                for inner in self.computations.get(callee, []):
                    f, t = self._flops(callee, inner)
                    flops, trans = flops + f, trans + t
        return flops, trans

    def _in_place(self, ins: Instr) -> bool:
        """A dynamic-update-slice (or a fusion ending in one): it writes its update, not the buffer."""
        if ins.opcode == "dynamic-update-slice":
            return True
        if ins.opcode != "fusion" or not ins.callees:
            return False
        body = self.computations.get(ins.callees[0][1], [])
        root = body[-1] if body else None  # the ROOT is printed last
        while root is not None and root.opcode == "bitcast":
            root = next((i for i in body if i.name == root.operands[0]), None)
        return root is not None and root.opcode == "dynamic-update-slice"

    def _update(self, comp: str, ins: Instr) -> tuple[int, float] | None:
        """(the operand it updates in place, the bytes of the update) of a dynamic-update-slice or a
        scatter, or of a fusion whose root is one (the buffer traced to a parameter through bitcasts).
        XLA shares such an op's buffer operand with its output and writes only the update; where the
        operand is still needed after it, copy insertion adds a `copy` (counted as such). The TPU
        compiler marks these fusions `"aliasing_operands"` (a decode step's `scatter_fusion` writing one
        token's K into the [layers, B, S, K, H] cache: 8 KB written, not the 103 MB stack read and written)."""
        if ins.opcode == "dynamic-update-slice" and len(ins.operands) > 1:
            return 0, 0.0  # the update operand is counted as read; the write is the same bytes
        if ins.opcode == "scatter" and len(ins.operands) == 3:
            return 0, float(shape_bytes(self.shapes[comp].get(ins.operands[2], "")))
        if ins.opcode != "fusion" or not ins.callees:
            return None
        body = {i.name: i for i in self.computations.get(ins.callees[0][1], [])}
        root = self.computations[ins.callees[0][1]][-1] if body else None
        while root is not None and root.opcode == "bitcast":
            root = body.get(root.operands[0])
        if root is None or not (root.opcode == "dynamic-update-slice" and len(root.operands) >= 2
                                or root.opcode == "scatter" and len(root.operands) == 3):  # one buffer
            return None
        buffer = body.get(root.operands[0])
        while buffer is not None and buffer.opcode == "bitcast":
            buffer = body.get(buffer.operands[0])
        if buffer is None or buffer.opcode != "parameter" or not buffer.args.strip().isdigit():
            return None
        update = root.operands[2 if root.opcode == "scatter" else 1]
        return int(buffer.args), float(shape_bytes(body[update].shape if update in body else ""))

    def _sliced_read(self, fused: str, index: int, nested: bool) -> float:
        """Bytes a fusion reads of its operand `index`: the slices taken when only slices use it. XLA's
        model looks at the fusion's own instructions only (`nested=False`); a scanned layer's fusion
        often slices its stacked [layers, ...] operand inside a fusion it holds, which reads one
        layer's slice, not the whole stack (`nested=True`: followed through bitcasts and fusions)."""
        body = self.computations.get(fused, [])
        param = next((i.name for i in body if i.opcode == "parameter" and i.args.strip() == str(index)), None)
        return self._slices_of(body, param, nested) if param else math.inf

    def _slices_of(self, body: list[Instr], value: str, nested: bool) -> float:
        total = 0.0
        for u in (i for i in body if value in i.operands):
            if u.opcode in _SLICING and u.operands[0] == value and value not in u.operands[1:]:
                total += shape_bytes(u.shape)
            elif nested and u.opcode == "bitcast":
                total += self._slices_of(body, u.name, nested)
            elif nested and u.opcode == "fusion" and u.callees:
                total += sum(self._sliced_read(u.callees[0][1], k, nested) for k, o in enumerate(u.operands)
                             if o == value)
            else:
                return math.inf
            if total == math.inf:
                return math.inf
        return total if total else math.inf

    def _bytes(self, comp: str, ins: Instr, xla_model: bool = False) -> float:
        """HBM bytes of one top-level instruction: its operands read and outputs written, a sliced
        operand by its slice, an in-place update by its update, async pairs once. Arrays the TPU
        compiler placed in another memory space (VMEM, S(1)) move no HBM bytes: a prefetch `copy-start`
        from HBM into VMEM reads HBM once and its `copy-done` writes VMEM; the fusions that then use the
        buffer read VMEM. XLA's model (`xla_model`) counts every array whatever its memory space."""
        if ins.opcode in _NO_BYTES:
            return 0.0
        operand_shapes = [self.shapes[comp].get(o, "") for o in ins.operands]
        operands = [shape_bytes(t) for t in operand_shapes]
        outputs = [shape_bytes(f"{t}[{d}]") for t, d in _SHAPE.findall(ins.shape)]
        in_hbm = [1.0 if b or not n else 0.0 for b, n in zip(hbm_arrays(ins.shape), outputs)]
        if ins.opcode in _SLICING and operands:  # reads the slice, not the buffer
            operands[0] = min(operands[0], sum(outputs))
        elif ins.opcode == "slice-start" and operands and len(outputs) > 1:  # ((operand), slice, s32[])
            operands[0] = min(operands[0], outputs[1])
        elif ins.opcode == "fusion" and ins.callees:
            operands = [min(n, self._sliced_read(ins.callees[0][1], i, not xla_model)) for i, n in enumerate(operands)]
        for out_index, operand_index in _aliases(ins.attrs):  # buffers passed through untouched
            if out_index < len(outputs) and operand_index < len(operands):
                outputs[out_index] = operands[operand_index] = 0
        update = None if xla_model else self._update(comp, ins)
        if update is not None and update[0] < len(operands):  # reads its inputs, writes the update
            outputs, in_hbm = [update[1] or operands[1]], in_hbm[:1]
            operands[update[0]] = 0
        elif self._in_place(ins) and operands:  # XLA's model: the largest operand is the buffer
            big = max(range(len(operands)), key=operands.__getitem__)
            outputs, in_hbm, operands[big] = [sum(operands) - operands[big]], in_hbm[:1], 0
        if ins.opcode.endswith("-start"):  # async pairs: the start reads, the done writes
            outputs = []
        elif ins.opcode.endswith("-done"):
            operands = []
        if not xla_model:
            operands = [n * _hbm_share(t) for n, t in zip(operands, operand_shapes)]
            outputs = [n * f for n, f in zip(outputs, in_hbm)]
        return float(sum(operands) + sum(outputs))

    def costs(self, root: str | None = None, loop_trips: bool = True, xla_model: bool = False) -> dict[str, float]:
        """FLOPs, transcendentals and HBM bytes of one run of `root` (default: the entry). `xla_model`:
        bytes as XLA's model counts them, where a fusion reads the whole of an operand it slices inside
        an inner fusion and an in-place update's largest operand is taken for its buffer."""
        total = {"flops": 0.0, "transcendentals": 0.0, "bytes accessed": 0.0}
        for comp, times in self.multiplicities(root, loop_trips).items():
            if comp in self.fused:
                continue
            for ins in self.computations.get(comp, []):
                f, t = self._flops(comp, ins)
                total["flops"] += times * f
                total["transcendentals"] += times * t
                total["bytes accessed"] += times * self._bytes(comp, ins, xla_model)
        return total

    def collectives(self, root: str | None = None, loop_trips: bool = True) -> list[Collective]:
        """Every collective one run of `root` (default: the entry) issues, with how often."""
        found: dict[tuple, Collective] = {}
        for comp, times in self.multiplicities(root, loop_trips).items():
            for ins in self.computations.get(comp, []):
                base = ins.opcode.removesuffix("-start")
                if base not in COLLECTIVES:
                    continue
                operand = sum(shape_bytes(self.shapes[comp].get(o, "")) for o in ins.operands)
                # An async start's result is (operand, result[, scratch]): the largest is the result.
                result = max((shape_bytes(f"{t}[{d}]") for t, d in _SHAPE.findall(ins.shape)), default=0)
                channel = re.search(r"channel_id=(\d+)", ins.attrs)
                key = (base, channel.group(1)) if channel else (base, comp, ins.name)
                c = Collective(base, max(operand, result), _group_size(ins.attrs), times)
                if key not in found or found[key].times < times:
                    found[key] = c
        return list(found.values())


def _conv_contraction(labels: tuple[str, str, str], lhs: list[int], rhs: list[int], out: list[int],
                      attrs: str) -> float:
    """Multiply-adds per output element of a convolution: input features x the kernel taps that land on
    input (not padding, not dilation holes). The TPU compiler writes batched matmuls as convolutions
    whose windows mostly hit padding, so the window's size alone overcounts them many times."""
    lhs_l, rhs_l, out_l = labels
    contract = float(math.prod(n for label, n in zip(rhs_l, rhs) if label == "i"))
    window = re.search(r"window=\{([^}]*)\}", attrs)
    if not window:
        return contract
    fields = dict(re.findall(r"(\w+)=([0-9x_]+)", window.group(1)))
    size = [int(v) for v in fields["size"].split("x")]
    ones = "x".join("1" * len(size))
    stride = [int(v) for v in fields.get("stride", ones).split("x")]
    lhs_dil = [int(v) for v in fields.get("lhs_dilate", ones).split("x")]
    rhs_dil = [int(v) for v in fields.get("rhs_dilate", ones).split("x")]
    pad_lo = [int(v.split("_")[0]) for v in fields["pad"].split("x")] if "pad" in fields else [0] * len(size)
    for d in range(len(size)):
        n_in, n_out = lhs[lhs_l.index(str(d))], out[out_l.index(str(d))]
        o = np.arange(n_out)[:, None]
        pos = o * stride[d] + np.arange(size[d])[None, :] * rhs_dil[d] - pad_lo[d]
        hit = (pos >= 0) & (pos <= (n_in - 1) * lhs_dil[d]) & (pos % lhs_dil[d] == 0)
        contract *= hit.sum() / max(n_out, 1)
    return contract


def _aliases(attrs: str) -> list[tuple[int, int]]:
    """output_to_operand_aliasing={{1}: (0, {}), ...} -> [(output index, operand index), ...]."""
    m = re.search(r"output_to_operand_aliasing=\{(.*?\))\s*\}", attrs)
    return [(int(o or 0), int(p)) for o, p in re.findall(r"\{(\d*)\}:\s*\((\d+)", m.group(1))] if m else []


def _group_size(attrs: str) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if m:  # mesh['axis_0'=32,'axis_1'=1] {'axis_0'}: the named axes form a group
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)) if a in sizes) or 1
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)  # iota form [groups,size]<=[...]
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
    return len(m.group(1).split(",")) if m else 1
