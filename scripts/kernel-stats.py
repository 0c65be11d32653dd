#!/usr/bin/env python3
"""What a kernel costs, read from the compiled code, without a GPU.

Usage: source scripts/deps.sh; python3 scripts/kernel-stats.py [rsa.cu ...]
       [--arch sm_90] [--kernel NAME_SUBSTRING] [--functions] [--tree]

For each program (default: every kernels/*.cu) this compiles with NVRTC for
--arch the way scripts/nvrtc-check.py does, with ptxas' verbose report, and
prints per kernel: registers, stack frame and spill bytes. When nvdisasm is
at hand ($NVDISASM, or the `nvidia-cuda-nvdisasm` wheel, which this script
pip-installs into .cache/nvdisasm on first use) it also disassembles the
CUBIN and prints every loop (a conditional backward branch) of each kernel
with its SASS instruction mix: all instructions, integer multiplies (IMAD,
IMAD.HI, IMAD.WIDE, fused ones with carry in included; not the IMAD forms
that only move, add or shift),
shuffles and memory operations. --functions adds the device functions that
are not kernels (the __noinline__ point operations and exponentiations of
the EC kernels) with their whole instruction mix: for straight-line code
such as a point addition that is what one call issues. --tree prints each
kernel's loops as a nesting tree instead, each with the instructions it
issues per trip outside its inner loops ("own"), so a cost per operation
is the sum of own counts times trip counts read off the source (e.g. an
RSA exponent window: the window loop's own + 4 x (squaring's own + N x
reduction row) + 16 x lookup + N x product row).

These are static counts: they say what one trip of a loop issues, not how
often it runs or how fast the GPU issues it. Use them to compare kernels
and mappings on a machine without a GPU (e.g. multiplies per instruction in
the Montgomery row loop, local memory in hot loops); rates come only from
`sigmux bench` on a GPU.
"""
import argparse
import collections
import ctypes
import glob
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# Include expansion and NVRTC loading are nvrtc-check.py's.
_spec = importlib.util.spec_from_file_location("nvrtc_check", os.path.join(HERE, "nvrtc-check.py"))
nvrtc_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nvrtc_check)
ROOT = nvrtc_check.ROOT
expand = nvrtc_check.expand


def compile_cubin(lib, program, arch):
    """(CUBIN bytes, ptxas log) for one program."""
    src = expand(os.path.abspath(os.path.join(ROOT, program)), set()).encode()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, program.encode(), 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"--std=c++17",
            b"--ptxas-options=-v"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit(f"{program}: compilation failed\n{log.value.decode(errors='replace')}")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    cubin = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return cubin.raw, log.value.decode(errors="replace")


def ptxas_report(log):
    """{kernel: (registers, stack bytes, spill store bytes, spill load bytes)}."""
    out, cur, frame = {}, None, (0, 0, 0)
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur, frame = m.group(1), (0, 0, 0)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur and frame == (0, 0, 0):
            frame = tuple(int(x) for x in m.groups())
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            out[cur] = (int(m.group(1)),) + frame
            cur = None
    return out


def find_nvdisasm():
    if os.environ.get("NVDISASM"):
        return os.environ["NVDISASM"]
    cache = os.path.join(HERE, "..", ".cache", "nvdisasm")
    hits = glob.glob(os.path.join(cache, "**", "bin", "nvdisasm"), recursive=True)
    if not hits:
        # The wheel of the newest toolkit reads older CUBINs; 13.2 is the
        # oldest CUDA 13 one on PyPI.
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                            cache, "nvidia-cuda-nvdisasm==13.2.*"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"(no nvdisasm: {r.stderr.strip().splitlines()[-1:]}; registers only)")
            return None
        hits = glob.glob(os.path.join(cache, "**", "bin", "nvdisasm"), recursive=True)
    return hits[0] if hits else None


# Multiplies: IMAD, IMAD.HI and IMAD.WIDE, with carry in (.X) or not; not
# IMAD.X / IMAD.MOV / IMAD.SHL / IMAD.IADD, which only add, move or shift.
MUL = re.compile(r"^IMAD(\.U32)?$|^IMAD\.(HI|WIDE)(\.U32)?(\.X)?$")


def mix(c):
    """(instructions, multiplies, shuffles, memory ops) of an opcode Counter."""
    n = sum(c.values())
    mul = sum(v for op, v in c.items() if MUL.match(op))
    shfl = sum(v for op, v in c.items() if op.startswith("SHFL"))
    mem = sum(v for op, v in c.items() if op.startswith(("LDL", "STL", "LDG", "STG", "LD.", "ST.", "LDC", "LDS", "STS")))
    return n, mul, shfl, mem


def opcode(text):
    w = text.split()
    return w[1] if w[0].startswith("@") else w[0]


def functions(sass):
    """{(kernel, function): (instructions, multiplies, shuffles, memory ops)}
    for the device functions that are not kernels (the __noinline__ ones,
    which nvdisasm lists after their kernel as `$kernel$mangled:`): straight
    code, such as a point addition, issues all of them once per call."""
    out, cur = {}, None
    for line in sass.splitlines():
        if re.match(r"\.text\.\S+:", line):
            cur = None
            continue
        m = re.match(r"\$(\w+?)\$(\S+):$", line.strip())
        if m:
            cur = (m.group(1), m.group(2))
            out[cur] = collections.Counter()
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m and cur:
            out[cur][opcode(m.group(1).strip())] += 1
    return {f: mix(c) for f, c in out.items()}


def demangle(names):
    try:
        r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return dict(zip(names, r.stdout.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def loops(sass):
    """{kernel: [(instructions, multiplies, shuffles, memory ops)] per loop}."""
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = re.match(r"\.text\.(\S+):", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is None:
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            funcs[cur].append(("i", m.group(1).strip()))
        m = re.match(r"(\.L_x_\d+):", line.strip())
        if m:
            funcs[cur].append(("label", m.group(1)))
    out = {}
    for f, ins in funcs.items():
        pos = {x[1]: i for i, x in enumerate(ins) if x[0] == "label"}
        found = []
        for i, (kind, text) in enumerate(ins):
            m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", text) if kind == "i" else None
            if m and text.startswith("@") and pos.get(m.group(1), i) < i:
                c = collections.Counter(opcode(t) for k, t in ins[pos[m.group(1)]:i + 1] if k == "i")
                found.append(mix(c))
        out[f] = found
    return out


def loop_tree(sass, kernel):
    """[(depth, first, last, own (instructions, multiplies, shuffles, memory
    ops), wide multiplies)] for the loops of one kernel, outermost first:
    own counts leave out the loop's inner loops."""
    ins, pos, cur = [], {}, None
    for line in sass.splitlines():
        m = re.match(r"\.text\.(\S+):", line)
        if m:
            cur = m.group(1)
            continue
        if cur != kernel:
            continue
        m = re.match(r"(\.L_x_\d+):", line.strip())
        if m:
            pos[m.group(1)] = len(ins)
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
        if m:
            ins.append(m.group(1).strip())
    spans = []
    for i, text in enumerate(ins):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", text)
        if m and text.startswith("@") and pos.get(m.group(1), i) < i:
            spans.append((pos[m.group(1)], i))
    spans.sort(key=lambda s: (s[0], -s[1]))
    out = []
    for a, b in spans:
        depth = sum(1 for c, d in spans if (c, d) != (a, b) and c <= a and b <= d)
        inner = set()
        for c, d in spans:
            if (c, d) != (a, b) and a <= c and d <= b:
                inner.update(range(c, d + 1))
        c = collections.Counter(opcode(ins[k]) for k in range(a, b + 1) if k not in inner)
        wide = sum(v for op, v in c.items() if op.startswith("IMAD.WIDE"))
        out.append((depth, a, b, mix(c), wide))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("programs", nargs="*")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernel", default="", help="only kernels whose name contains this")
    ap.add_argument("--tree", action="store_true",
                    help="print each kernel's loops as a nesting tree with per-trip counts outside inner loops")
    ap.add_argument("--functions", action="store_true",
                    help="also list the non-kernel device functions (__noinline__) with their instruction mix")
    a = ap.parse_args()
    programs = a.programs or sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.cu")))
    lib = nvrtc_check.load_nvrtc()
    dis = find_nvdisasm()
    for program in programs:
        cubin, log = compile_cubin(lib, program, a.arch)
        regs = ptxas_report(log)
        sass = ""
        if dis:
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(cubin)
                f.flush()
                sass = subprocess.run([dis, "-c", f.name], capture_output=True, text=True, check=True).stdout
        per_loop = loops(sass) if sass else {}
        for k in sorted(regs):
            if a.kernel not in k:
                continue
            r, stack, st, ld = regs[k]
            print(f"{program} {a.arch} {k}: {r} registers, {stack} B stack, spills {st} B stored / {ld} B loaded")
            if a.tree and sass:
                for depth, first, last, (n, mul, shfl, mem), wide in loop_tree(sass, k):
                    print(f"    {'  ' * depth}loop {first}..{last}: own {n:6} instr  {mul:5} mul"
                          f" ({wide} wide)  {shfl:4} shfl  {mem:4} mem")
                continue
            seen = collections.Counter(per_loop.get(k, []))
            for (n, mul, shfl, mem), times in sorted(seen.items(), key=lambda x: -x[0][1] * x[1])[:8]:
                share = f"{mul / n:.0%}" if n else "-"
                print(f"    loop x{times:<3} {n:6} instr  {mul:5} mul ({share})  {shfl:4} shfl  {mem:4} mem")
        if a.functions and sass:
            funcs = functions(sass)
            names = demangle(sorted({f for _, f in funcs}))
            for (k, f) in sorted(funcs, key=lambda kf: (kf[0], names[kf[1]])):
                n, mul, shfl, mem = funcs[(k, f)]
                if a.kernel in k:
                    print(f"{program} {a.arch} {k} calls {names[f]}: {n} instr  {mul} mul  {shfl} shfl  {mem} mem")


if __name__ == "__main__":
    main()
