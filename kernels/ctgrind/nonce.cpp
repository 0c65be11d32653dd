// Constant-time check of the nonce kernels' per-item code (ctgrind method):
// the private key is marked undefined for valgrind's memcheck, so any branch
// or memory address that depends on it is reported as a use of an
// uninitialised value. k and ok are declassified (marked defined) only
// before printing. Driven by tests/ctgrind_nonce.rs; not part of the build
// (kernels/host/ is), compiled with: c++ -std=c++17 -O2 -g -I kernels.
//
// Usage: nonce <ct|leak> <p256|p384> <d hex, big-endian> <seed hex, 32 bytes>
//              <z hex, big-endian>...
// Prints one line per z: "<ok> <k hex, big-endian>". Mode `leak` adds a
// deliberate branch on d: the negative control valgrind must catch.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <valgrind/memcheck.h>

#include "nonce/rfc6979.cuh"

using smx::u32;
using smx::u8;

static bool parse_hex(const char *s, u8 *out, size_t n) {
    if (strlen(s) != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return false;
        out[i] = (u8)v;
    }
    return true;
}

// Big-endian hex to little-endian limbs.
static bool parse_limbs(const char *s, u32 *x, int L) {
    std::vector<u8> b(4 * L);
    if (!parse_hex(s, b.data(), b.size())) return false;
    for (int j = 0; j < L; j++) {
        const u8 *p = &b[4 * (L - 1 - j)];
        x[j] = (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s <ct|leak> <p256|p384> <d> <seed> <z>...\n", argv[0]);
        return 2;
    }
    bool leak = strcmp(argv[1], "leak") == 0;
    bool p384 = strcmp(argv[2], "p384") == 0;
    int L = p384 ? 12 : 8;
    u32 count = (u32)(argc - 5);
    std::vector<u32> key(L + 4, 0), z((size_t)L * count), k((size_t)L * count), ok(count);
    u8 seed[32];
    if (!parse_limbs(argv[3], key.data(), L) || !parse_hex(argv[4], seed, 32)) {
        fprintf(stderr, "bad d or seed\n");
        return 2;
    }
    for (u32 i = 0; i < count; i++) {
        u32 zi[12];
        if (!parse_limbs(argv[5 + i], zi, L)) {
            fprintf(stderr, "bad z %u\n", i);
            return 2;
        }
        for (int j = 0; j < L; j++) z[(size_t)j * count + i] = zi[j];
    }

    // The secret: the whole key blob.
    VALGRIND_MAKE_MEM_UNDEFINED(key.data(), key.size() * sizeof(u32));
    if (leak && (key[0] & 1)) fputs("negative control: branched on d\n", stderr);

    for (u32 i = 0; i < count; i++) {
        if (p384)
            smx::nonce::p384_nonce_item(key.data(), z.data(), seed, k.data(), ok.data(), count, i);
        else
            smx::nonce::p256_nonce_item(key.data(), z.data(), seed, k.data(), ok.data(), count, i);
    }

    // Declassify the outputs: k is handed to the signer, ok to the host.
    VALGRIND_MAKE_MEM_DEFINED(k.data(), k.size() * sizeof(u32));
    VALGRIND_MAKE_MEM_DEFINED(ok.data(), ok.size() * sizeof(u32));
    for (u32 i = 0; i < count; i++) {
        printf("%u ", ok[i]);
        for (int j = L - 1; j >= 0; j--) printf("%08x", k[(size_t)j * count + i]);
        printf("\n");
    }
    return 0;
}
