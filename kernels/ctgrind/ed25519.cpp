// ctgrind driver for the Ed25519 sign path (tests/ctgrind_ed25519.rs): the
// secret key words a and prefix are marked undefined for valgrind's
// memcheck, which then reports any branch or memory address that depends on
// them or on anything computed from them (r, r B, S). The signature is
// marked defined (it is public) before it is printed.
//
// Not part of the host library (it is not under kernels/host). Build:
//   c++ -std=c++17 -O2 -g -I kernels kernels/ctgrind/ed25519.cpp -o ed25519_ctgrind
// Usage: ed25519_ctgrind sign|leak < lines of "key msg": key is the first 24
// key words (a, prefix, A; ed25519.cu) as 192 hex digits, word by word, each
// word big-endian; msg the message in hex ("-" for empty). Prints the
// 64-byte signature R || S in hex per line. `leak` first runs a deliberately
// secret-dependent branch: the negative control, valgrind must flag it.
#include <valgrind/memcheck.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "ed25519/eddsa.cuh"

using smx::u32;
using namespace smx::ed25519;

static volatile u32 sink;

static int nibble(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch |= 32;
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

static bool parse_key(const char *h, u32 *key) {
    if (strlen(h) != 8 * KEY_HEAD) return false;
    for (int j = 0; j < KEY_HEAD; j++) {
        u32 v = 0;
        for (int c = 0; c < 8; c++) {
            int x = nibble(h[8 * j + c]);
            if (x < 0) return false;
            v = v << 4 | (u32)x;
        }
        key[j] = v;
    }
    return true;
}

static bool parse_msg(const char *h, std::vector<unsigned char> &out) {
    out.clear();
    if (!strcmp(h, "-")) return true;
    size_t n = strlen(h);
    if (n % 2) return false;
    for (size_t i = 0; i < n; i += 2) {
        int a = nibble(h[i]), b = nibble(h[i + 1]);
        if (a < 0 || b < 0) return false;
        out.push_back((unsigned char)(a << 4 | b));
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc != 2 || (strcmp(argv[1], "sign") && strcmp(argv[1], "leak"))) {
        fprintf(stderr, "usage: %s sign|leak < inputs\n", argv[0]);
        return 2;
    }
    bool leak = !strcmp(argv[1], "leak");
    std::vector<u32> table(TABLE_WORDS);
    comb_table_build(table.data());
    static char line[1 << 16];
    std::vector<unsigned char> msg;
    while (fgets(line, sizeof line, stdin)) {
        char *f[2];
        int nf = 0;
        for (char *tok = strtok(line, " \n"); tok && nf < 2; tok = strtok(nullptr, " \n")) f[nf++] = tok;
        u32 key[KEY_HEAD], sig[SIG_WORDS], ok[1];  // signing reads the head only
        if (nf != 2 || !parse_key(f[0], key) || !parse_msg(f[1], msg)) {
            fprintf(stderr, "bad input line\n");
            return 1;
        }
        u32 off[2] = {0, (u32)msg.size()};
        msg.push_back(0);  // a valid pointer for the empty message
        VALGRIND_MAKE_MEM_UNDEFINED(key, 16 * sizeof(u32));  // a and prefix
        if (leak && (key[0] & 8)) sink = sink + 1;           // secret-dependent branch
        sign_lanes(table.data(), key, msg.data(), off, sig, ok, 1, 0);  // a warp, one item
        VALGRIND_MAKE_MEM_DEFINED(sig, sizeof sig);
        VALGRIND_MAKE_MEM_DEFINED(ok, sizeof ok);
        if (ok[0] != 1) return 1;
        for (int j = 0; j < 64; j++) printf("%02x", (sig[j / 4] >> (8 * (j % 4))) & 0xff);
        printf("\n");
    }
    return 0;
}
