// ctgrind driver for the ECDSA sign path (tests/ctgrind_ec.rs): the secret
// inputs d and k are marked undefined for valgrind's memcheck, which then
// reports any branch or memory address that depends on them. The outputs r,
// s, ok are marked defined (they are public) before they are printed.
//
// Not part of the host library (it is not under kernels/host). Build:
//   c++ -std=c++17 -O2 -g -I kernels kernels/ctgrind/ec.cpp -o ec_ctgrind
// Usage: ec_ctgrind sign|leak < lines of "p256|p384 d qx qy z k" (big-endian
// hex, 8 L digits each); prints "r s ok" per line. `leak` first runs a
// deliberately secret-dependent branch: the negative control, valgrind must
// flag it.
#include <valgrind/memcheck.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ec/ecdsa.cuh"

using smx::u32;
using namespace smx::ec;

static volatile u32 sink;

static bool parse_hex(const char *h, u32 *out, int L) {
    if ((int)strlen(h) != 8 * L) return false;
    for (int j = 0; j < L; j++) {
        u32 v = 0;
        for (int c = 0; c < 8; c++) {
            char ch = h[(L - 1 - j) * 8 + c];
            v = v << 4 | (u32)(ch <= '9' ? ch - '0' : (ch | 32) - 'a' + 10);
        }
        out[j] = v;
    }
    return true;
}

static void print_hex(const u32 *v, int L) {
    for (int j = L - 1; j >= 0; j--) printf("%08x", v[j]);
}

template <class C> static int run(bool leak, char **f, const std::vector<u32> &table) {
    const int L = C::L;
    u32 key[3 * L], z[L], k[L], r[L], s[L], ok[1];
    if (!parse_hex(f[0], key, L) || !parse_hex(f[1], key + L, L) || !parse_hex(f[2], key + 2 * L, L) ||
        !parse_hex(f[3], z, L) || !parse_hex(f[4], k, L))
        return 1;
    VALGRIND_MAKE_MEM_UNDEFINED(key, L * sizeof(u32));  // d
    VALGRIND_MAKE_MEM_UNDEFINED(k, sizeof k);
    if (leak && (key[0] & 1)) sink = sink + 1;  // secret-dependent branch
    // A batch of one: the warp's other lanes are past the batch, so the
    // shared inversion runs on this item's values and the lanes' 1s.
    sign_lanes<C>(table.data(), key, z, k, r, s, ok, 1, 0);
    VALGRIND_MAKE_MEM_DEFINED(r, sizeof r);
    VALGRIND_MAKE_MEM_DEFINED(s, sizeof s);
    VALGRIND_MAKE_MEM_DEFINED(ok, sizeof ok);
    print_hex(r, L);
    printf(" ");
    print_hex(s, L);
    printf(" %u\n", ok[0]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "sign") && strcmp(argv[1], "leak"))) {
        fprintf(stderr, "usage: %s sign|leak < inputs\n", argv[0]);
        return 2;
    }
    bool leak = !strcmp(argv[1], "leak");
    std::vector<u32> t256(comb_t<P256>::TABLE_WORDS), t384(comb_t<P384>::TABLE_WORDS);
    comb_table_build<P256>(t256.data());
    comb_table_build<P384>(t384.data());
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        char *f[6];
        int nf = 0;
        for (char *tok = strtok(line, " \n"); tok && nf < 6; tok = strtok(nullptr, " \n")) f[nf++] = tok;
        if (nf != 6) {
            fprintf(stderr, "bad input line\n");
            return 1;
        }
        int rc = !strcmp(f[0], "p256")   ? run<P256>(leak, f + 1, t256)
                 : !strcmp(f[0], "p384") ? run<P384>(leak, f + 1, t384)
                                         : 1;
        if (rc) {
            fprintf(stderr, "bad input: %s\n", f[0]);
            return rc;
        }
    }
    return 0;
}
