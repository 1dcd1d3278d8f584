"""A small classic-BPF assembler for seccomp filters.

Some facts about seccomp's classic BPF:

- Every instruction is ``struct sock_filter { __u16 code; __u8 jt; __u8 jf;
  __u32 k; }``; conditional jumps are relative and at most 255 ahead, so
  the program is laid out as short local blocks that never need far jumps.
- The program reads ``struct seccomp_data { int nr; __u32 arch;
  __u64 instruction_pointer; __u64 args[6]; }``: ``nr`` at 0, ``arch`` at 4,
  the low 32 bits of ``args[i]`` at ``16 + 8*i`` (little endian), the high
  ones at ``20 + 8*i``.
- The kernel truncates ``int`` arguments to their low 32 bits, so checks on
  ioctl requests, prctl options or socket types must compare only the low
  word: a 64-bit comparison could be bypassed by setting the high bits.
- Since Linux 5.11 the kernel caches, per system call number, whether the
  filter allows it regardless of arguments; a chain of ``JEQ nr`` tests then
  costs nothing for the calls it does not name.
"""

from __future__ import annotations

import struct

from stockade._record import record

# BPF instruction classes and fields (include/uapi/linux/bpf_common.h).
BPF_LD = 0x00
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_W = 0x00
BPF_ABS = 0x20
BPF_AND = 0x50
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_K = 0x00

OFF_NR = 0
OFF_ARCH = 4


def arg_lo(index: int) -> int:
    """Offset of the low 32 bits of ``args[index]`` in ``seccomp_data``."""
    return 16 + 8 * index


def arg_hi(index: int) -> int:
    """Offset of the high 32 bits of ``args[index]``."""
    return 20 + 8 * index


@record(frozen=True)
class Label:
    """A jump target, placed with :meth:`Program.label`."""

    name: str


class Program:
    """A BPF program under construction, with symbolic jump targets.

    Conditional jumps take a :class:`Label` or ``0`` (fall through) for each
    branch; :meth:`assemble` resolves labels and refuses any jump longer
    than the 255 instructions a ``jt``/``jf`` byte can hold.
    """

    def __init__(self) -> None:
        self._insns: list[tuple[int, Label | int, Label | int, int]] = []
        self._labels: dict[str, int] = {}
        self._far: list[tuple[int, Label]] = []
        self._counter = 0

    def new_label(self, hint: str = "L") -> Label:
        self._counter += 1
        return Label(f"{hint}{self._counter}")

    def label(self, label: Label) -> None:
        if label.name in self._labels:
            raise ValueError(f"label {label.name} placed twice")
        self._labels[label.name] = len(self._insns)

    def load(self, offset: int) -> None:
        self._insns.append((BPF_LD | BPF_W | BPF_ABS, 0, 0, offset))

    def and_(self, mask: int) -> None:
        self._insns.append((BPF_ALU | BPF_AND | BPF_K, 0, 0, mask & 0xFFFFFFFF))

    def jump(self, op: int, k: int, jt: Label | int = 0, jf: Label | int = 0) -> None:
        self._insns.append((BPF_JMP | op | BPF_K, jt, jf, k & 0xFFFFFFFF))

    def jeq(self, k: int, jt: Label | int = 0, jf: Label | int = 0) -> None:
        self.jump(BPF_JEQ, k, jt, jf)

    def ja(self, target: Label) -> None:
        """Unconditional jump; its 32-bit offset reaches anywhere."""
        self._insns.append((BPF_JMP | BPF_JA, 0, 0, 0))
        self._far.append((len(self._insns) - 1, target))

    def ret(self, value: int) -> None:
        self._insns.append((BPF_RET | BPF_K, 0, 0, value & 0xFFFFFFFF))

    def __len__(self) -> int:
        return len(self._insns)

    def assemble(self) -> bytes:
        """The program as ``struct sock_filter[]`` bytes."""
        for pc, target in self._far:
            code, jt, jf, _ = self._insns[pc]
            self._insns[pc] = (code, jt, jf, self._labels[target.name] - pc - 1)
        self._far.clear()
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self._insns):
            out += struct.pack("=HBBI", code, self._offset(pc, jt), self._offset(pc, jf), k)
        return bytes(out)

    def _offset(self, pc: int, target: Label | int) -> int:
        if isinstance(target, int):
            return target
        where = self._labels.get(target.name)
        if where is None:
            raise ValueError(f"label {target.name} never placed")
        delta = where - pc - 1
        if not 0 <= delta <= 255:
            raise ValueError(f"jump from {pc} to {target.name} spans {delta} instructions")
        return delta


def disassemble(program: bytes) -> list[tuple[int, int, int, int]]:
    """Split filter bytes into ``(code, jt, jf, k)`` tuples (for tests)."""
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
