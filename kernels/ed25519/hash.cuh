// SHA-512 as Ed25519 uses it: a stream of 32-byte key halves (packed words)
// and message bytes, the digest read as a 512-bit little-endian integer.
// The compression is the sha512.cuh one behind a single real call: the
// generic sha2::Ctx inlines a full 80-round compression at every put_byte
// and finish call site, and the sign and check paths have several (two
// hashes each), all of which NVRTC would have to compile (see the EC_CALL
// note in ec/field.cuh). Here there is one copy per program.
//
// Constant time: every branch and index depends on the byte position, i.e.
// on the (public) message length, never on the bytes hashed.
#pragma once

#include "ec/field.cuh"
#include "hash/sha512.cuh"

namespace smx {
namespace ed25519 {

EC_CALL void sha512_block(u64 *h, const u64 *w) { sha2::compress(sha2::Sha512(), h, w); }

struct sha512_t {
    u64 h[8];
    u64 w[16];  // block being filled, big-endian words, zero past pos
    u32 pos;    // bytes in w
    u32 len;    // bytes so far (messages are < 4 GiB: u32 offsets)

    EC_FN void begin() {
        sha2::init(sha2::Sha512(), h);
        for (int i = 0; i < 16; i++) w[i] = 0;
        pos = 0;
        len = 0;
    }

    EC_FN void put(u32 b) {
        w[pos >> 3] |= (u64)(b & 0xff) << (56 - 8 * (pos & 7));
        pos++;
        len++;
        if (pos == 128) {
            sha512_block(h, w);
            for (int i = 0; i < 16; i++) w[i] = 0;
            pos = 0;
        }
    }

    // 32 bytes packed little-endian in 8 words (key halves, encodings).
    EC_FN void put32(const u32 *v) {
        for (int j = 0; j < 32; j++) put(v[j >> 2] >> (8 * (j & 3)));
    }

    EC_FN void put_bytes(const u8 *p, u32 n) {
        for (u32 i = 0; i < n; i++) put(p[i]);
    }

    // Pads, compresses the last block(s) and writes the digest as 16
    // little-endian limbs: byte i of the digest is bits 8(i%4) of limb i/4.
    EC_FN void finish(u32 *out) {
        u64 bits = (u64)len * 8;
        put(0x80);
        while (pos != 112) put(0);
        w[14] = 0;
        w[15] = bits;
        sha512_block(h, w);
        for (int j = 0; j < 16; j++) {
            u32 half = (u32)(h[j >> 1] >> ((j & 1) ? 0 : 32));  // digest bytes 4j..4j+3, big-endian
            out[j] = (half >> 24) | ((half >> 8) & 0xff00u) | ((half << 8) & 0xff0000u) | (half << 24);
        }
    }
};

}  // namespace ed25519
}  // namespace smx
