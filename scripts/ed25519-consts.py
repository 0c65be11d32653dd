#!/usr/bin/env python3
"""Prints the constants of kernels/ed25519/field.cuh, scalar.cuh and comb.cuh
(B, host only there, as static const) (RFC 8032
edwards25519): for p = 2^255 - 19 and the group order L, the mont_t traits
(m0 = -m^-1 mod 2^32, RR = R^2 mod m, ONE = R mod m, EXP = m - 2 with
R = 2^256), the curve constants in Montgomery form mod p, the exponent of
the square root in decompression and the base point B (plain integers).
All values as 8 little-endian 32-bit limbs."""

p = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
R = 2**256


def limbs(x):
    return ", ".join("0x%08xu" % ((x >> (32 * i)) & 0xFFFFFFFF) for i in range(8))


def show(name, x, note=""):
    print(f"EC_CONST u32 {name}[8] = {{{limbs(x)}}};{note}")


def traits(prefix, m):
    show(prefix, m)
    show(prefix + "_RR", R * R % m)
    show(prefix + "_ONE", R % m)
    show(prefix + "_EXP", m - 2, "  // m - 2")
    print(f"// {prefix} m0 = 0x{(-pow(m, -1, 2**32)) % 2**32:08x}u")


traits("ED_P", p)
traits("ED_L", L)
d = (-121665 * pow(121666, -1, p)) % p
assert pow(d, (p - 1) // 2, p) == p - 1  # d is a non-square: the formulas are complete
sqrtm1 = pow(2, (p - 1) // 4, p)
assert sqrtm1 * sqrtm1 % p == p - 1
show("ED_D_MONT", d * R % p)
show("ED_D2_MONT", 2 * d * R % p)
show("ED_SQRTM1_MONT", sqrtm1 * R % p)
show("ED_EXP_SQRT", (p - 5) // 8, "  // (p - 5) / 8")
by = 4 * pow(5, -1, p) % p
x2 = (by * by - 1) * pow(d * by * by + 1, -1, p) % p
bx = pow(x2, (p + 3) // 8, p)
if (bx * bx - x2) % p:
    bx = bx * sqrtm1 % p
if bx & 1:
    bx = p - bx
show("ED_BX", bx)
show("ED_BY", by)
