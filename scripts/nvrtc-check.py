#!/usr/bin/env python3
"""Compiles kernel programs with NVRTC for quick feedback while editing them.

Usage: source scripts/deps.sh; python3 scripts/nvrtc-check.py [kernels/x.cu ...]
(default: every kernels/*.cu, for sm_90 and sm_80). Includes are expanded
the way src/kernels.rs does it. The test suite compiles through sigmux's own
NVRTC path (tests/nvrtc.rs); this is only a developer shortcut.
"""
import ctypes, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels")

def expand(path, seen):
    rel = os.path.relpath(path, ROOT)
    if rel in seen:
        return ""
    seen.add(rel)
    out = []
    for line in open(path):
        t = line.lstrip()
        if t.startswith("#pragma once"):
            continue
        m = re.match(r'#include\s+"([^"]+)"', t)
        if m:
            local = os.path.join(os.path.dirname(path), m.group(1))
            out.append(expand(local if os.path.exists(local) else os.path.join(ROOT, m.group(1)), seen))
            continue
        out.append(line)
    return "".join(out)

def load_nvrtc():
    """NVRTC from $SIGMUX_NVRTC_LIB (scripts/deps.sh sets it)."""
    path = os.environ.get("SIGMUX_NVRTC_LIB")
    if not path:
        sys.exit("SIGMUX_NVRTC_LIB is not set: source scripts/deps.sh first")
    # NVRTC dlopens its builtins by name; loading them first from the same
    # folder satisfies that without LD_LIBRARY_PATH.
    for b in sorted(os.listdir(os.path.dirname(path))):
        if b.startswith("libnvrtc-builtins.so"):
            ctypes.CDLL(os.path.join(os.path.dirname(path), b))
    return ctypes.CDLL(path)

def main():
    lib = load_nvrtc()
    files = sys.argv[1:] or sorted(os.path.join(ROOT, f) for f in os.listdir(ROOT) if f.endswith(".cu"))
    bad = 0
    for f in files:
        src = expand(os.path.abspath(f), set()).encode()
        for arch in ("sm_90", "sm_80"):
            prog = ctypes.c_void_p()
            assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(f).encode(), 0, None, None) == 0
            opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"--std=c++17"]
            arr = (ctypes.c_char_p * len(opts))(*opts)
            rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
            n = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            log = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetProgramLog(prog, log)
            print(f"{os.path.basename(f)} {arch}: {'ok' if rc == 0 else 'FAILED'}")
            if log.value.strip():
                print(log.value.decode(errors="replace"))
            bad += rc != 0
            lib.nvrtcDestroyProgram(ctypes.byref(prog))
    sys.exit(1 if bad else 0)

if __name__ == "__main__":
    main()
