// ctgrind driver for the RSA kernels' per-item code (tests/ctgrind_rsa.rs).
// Not part of the host library: the test compiles it on its own and runs it
// under valgrind memcheck with the secret half of the key blob (p, q, dp,
// dq, qinv and their Montgomery constants; rsa/crt.cuh) marked undefined.
// memcheck then reports every branch and every memory address that depends
// on a secret, so a clean run means the sign path is constant time in that
// sense. The signature is marked defined before it is checked and printed.
//
// Usage: rsa FILE MODE
//   FILE: little-endian u32 records [bits, key blob, message (bits/32 limbs)]
//   MODE: ct          sign each record (must be clean)
//         coop8 coop16 sign each record with the cooperative kernels' code
//                     (rsa/coop.cuh; a whole warp emulated, 8 or 16
//                     threads per CRT half; must be clean)
//         leak-branch also branch on a secret bit first (must fail)
//         leak-index  also load from a table at a secret index (must fail)
// Prints one line per record: "ok <signature, big-endian hex>" when the
// public check accepts the signature, "bad ..." otherwise.
#include <valgrind/memcheck.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "rsa/coop.cuh"

using smx::u32;

static volatile u32 sink;
static u32 lut[256];

template <int N>
static void run(std::vector<u32> key, std::vector<u32> msg, const char *mode) {
    typedef smx::rsa::KeyLayout<N> K;
    VALGRIND_MAKE_MEM_UNDEFINED(key.data() + K::SECRET, (K::WORDS - K::SECRET) * sizeof(u32));
    if (!strcmp(mode, "leak-branch")) {
        if (key[K::DP] & 1) sink = sink + 1;
    } else if (!strcmp(mode, "leak-index")) {
        sink = *(volatile u32 *)&lut[key[K::DP] & 255];
    }
    std::vector<u32> sig(2 * N);
    u32 ok = 0;
    if (!strcmp(mode, "coop8") || !strcmp(mode, "coop16")) {
        // One warp: item 0 and, for 8 lanes, a second group on the same
        // item that stores nothing (threads past the last item).
        smx::rsa::lane_t th;
        for (int w = 0; w < smx::rsa::kWarp; w++) th.x[w] = (u32)w;
        if (mode[4] == '8')
            smx::rsa::coop::sign_thread<N, 8>(key.data(), msg.data(), sig.data(), 1, th);
        else
            smx::rsa::coop::sign_thread<N, 16>(key.data(), msg.data(), sig.data(), 1, th);
    } else {
        smx::rsa::sign_item<N>(key.data(), msg.data(), sig.data(), 1, 0);
    }
    VALGRIND_MAKE_MEM_DEFINED(sig.data(), sig.size() * sizeof(u32));
    smx::rsa::check_item<N>(key.data(), sig.data(), msg.data(), &ok, 1, 0);
    printf("%s ", ok ? "ok" : "bad");
    for (int j = 2 * N - 1; j >= 0; j--) printf("%08x", sig[j]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FILE ct|coop8|coop16|leak-branch|leak-index\n", argv[0]);
        return 2;
    }
    for (u32 i = 0; i < 256; i++) lut[i] = i * 2654435761u ^ (u32)argc;
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    u32 bits;
    while (fread(&bits, 4, 1, f) == 1) {
        size_t n = bits / 64, words = 8 + 11 * n;
        std::vector<u32> key(words), msg(2 * n);
        key[0] = bits;
        if (fread(key.data() + 1, 4, words - 1, f) != words - 1 ||
            fread(msg.data(), 4, 2 * n, f) != 2 * n) {
            fprintf(stderr, "truncated record\n");
            return 2;
        }
        switch (bits) {
            case 2048: run<32>(key, msg, argv[2]); break;
            case 3072: run<48>(key, msg, argv[2]); break;
            case 4096: run<64>(key, msg, argv[2]); break;
            default: fprintf(stderr, "unsupported size %u\n", bits); return 2;
        }
    }
    return 0;
}
