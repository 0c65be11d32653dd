// SHA-256, and the machinery the whole SHA-2 family shares (sha512.cuh adds
// SHA-384 and SHA-512 on the same templates): a streaming context for
// messages of any public length and the one-block helpers HMAC uses for its
// fixed-size inputs. Same source for NVRTC and the host build (common.cuh).
//
// Constant time: the compression function has no table lookup indexed by
// data and no data-dependent branch; every length and position is public.
#pragma once

#include "../common.cuh"

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define SMX_UNROLL _Pragma("unroll")
// Round constants: read by every thread with the same (unrolled, constant)
// index, so constant memory broadcasts them.
#define SMX_HASH_TABLE __constant__ const
#else
#define SMX_UNROLL
#define SMX_HASH_TABLE static const
#endif

namespace smx {
namespace sha2 {

SMX_HASH_TABLE u32 SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

SMX_HASH_TABLE u32 SHA256_IV[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au, 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

// The SHA-256 tag: word type and sizes, the traits every template reads.
struct Sha256 {
    typedef u32 W;
    enum {
        BLOCK = 64,   // block bytes
        OUTB = 32,    // digest bytes
        OUTW = 8,     // digest words
        WB = 4,       // bytes per word
        LENB = 8,     // bytes of the length field
        ROUNDS = 64,
    };
};

SMX_HD u32 rotr(u32 x, u32 n) { return (x >> n) | (x << (32 - n)); }

SMX_HD void init(Sha256, u32 h[8]) {
    for (int i = 0; i < 8; i++) h[i] = SHA256_IV[i];
}

// One compression of the block `m` (16 big-endian words) into `h`.
SMX_HD void compress(Sha256, u32 h[8], const u32 m[16]) {
    u32 w[16];
    SMX_UNROLL
    for (int i = 0; i < 16; i++) w[i] = m[i];
    u32 a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    SMX_UNROLL
    for (int t = 0; t < 64; t++) {
        if (t >= 16) {
            u32 w1 = w[(t + 1) & 15], w14 = w[(t + 14) & 15];
            u32 s0 = rotr(w1, 7) ^ rotr(w1, 18) ^ (w1 >> 3);
            u32 s1 = rotr(w14, 17) ^ rotr(w14, 19) ^ (w14 >> 10);
            w[t & 15] += s0 + w[(t + 9) & 15] + s1;
        }
        u32 S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        u32 ch = (e & f) ^ (~e & g);
        u32 t1 = hh + S1 + ch + SHA256_K[t] + w[t & 15];
        u32 S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        u32 maj = (a & b) ^ (a & c) ^ (b & c);
        u32 t2 = S0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

// The length field's two last words for a message of `bits` bits (the
// 128-bit field of SHA-512 has a zero high half: messages are < 2^61 bytes).
SMX_HD void set_length(Sha256, u32 w[16], u64 bits) {
    w[14] = (u32)(bits >> 32);
    w[15] = (u32)bits;
}

// ---- generic over the family ----------------------------------------------

// Streaming state: chaining value, the block being filled (big-endian words,
// zero past `pos`), bytes in it, and the total length so far.
template <class H>
struct Ctx {
    typename H::W h[8];
    typename H::W w[16];
    u32 pos;
    u64 len;
};

template <class H>
SMX_HD void clear_block(typename H::W w[16]) {
    SMX_UNROLL
    for (int i = 0; i < 16; i++) w[i] = 0;
}

// Starts a hash from chaining value `h0` after `prefix` bytes already
// compressed (0 for a plain hash, BLOCK for an HMAC pad midstate).
template <class H>
SMX_HD void start(Ctx<H> &c, const typename H::W h0[8], u32 prefix) {
    for (int i = 0; i < 8; i++) c.h[i] = h0[i];
    clear_block<H>(c.w);
    c.pos = 0;
    c.len = prefix;
}

template <class H>
SMX_HD void begin(Ctx<H> &c) {
    typename H::W iv[8];
    init(H(), iv);
    start<H>(c, iv, 0);
}

template <class H>
SMX_HD void put_byte(Ctx<H> &c, u32 b) {
    typedef typename H::W W;
    u32 sh = 8 * (H::WB - 1 - c.pos % H::WB);
    c.w[c.pos / H::WB] |= (W)(b & 0xff) << sh;
    c.pos++;
    c.len++;
    if (c.pos == (u32)H::BLOCK) {
        compress(H(), c.h, c.w);
        clear_block<H>(c.w);
        c.pos = 0;
    }
}

template <class H>
SMX_HD void update(Ctx<H> &c, const u8 *p, u32 n) {
    for (u32 i = 0; i < n; i++) put_byte<H>(c, p[i]);
}

// Absorbs `n` words' worth of big-endian bytes (a digest kept as words).
template <class H>
SMX_HD void update_words(Ctx<H> &c, const typename H::W *v, u32 n) {
    for (u32 i = 0; i < n; i++)
        for (int j = H::WB - 1; j >= 0; j--) put_byte<H>(c, (u32)(v[i] >> (8 * j)));
}

// Pads and compresses the last block(s); the digest is c.h (its first OUTW
// words).
template <class H>
SMX_HD void finish(Ctx<H> &c) {
    u64 bits = c.len * 8;
    put_byte<H>(c, 0x80);
    while (c.pos != (u32)(H::BLOCK - H::LENB)) put_byte<H>(c, 0);
    set_length(H(), c.w, bits);
    compress(H(), c.h, c.w);
}

// Hashes exactly one digest-sized message `v` (plus one zero byte when
// `extra_zero`), starting from chaining value `h0` after `prefix` bytes: the
// whole input fits one block, so everything stays in registers. `out` may
// alias `v`.
template <class H>
SMX_HD void hash_digest_block(const typename H::W h0[8], u32 prefix, const typename H::W *v,
                              bool extra_zero, typename H::W out[8]) {
    typedef typename H::W W;
    const u32 bits = 8 * H::WB;
    W w[16];
    SMX_UNROLL
    for (int i = 0; i < (int)H::OUTW; i++) w[i] = v[i];
    SMX_UNROLL
    for (int i = H::OUTW; i < 16; i++) w[i] = 0;
    // The padding byte lands right after the message: first byte of the
    // next word, or its second byte after the extra zero.
    w[H::OUTW] = extra_zero ? (W)0x80 << (bits - 16) : (W)0x80 << (bits - 8);
    set_length(H(), w, (u64)(prefix + H::OUTB + (extra_zero ? 1 : 0)) * 8);
    W h[8];
    SMX_UNROLL
    for (int i = 0; i < 8; i++) h[i] = h0[i];
    compress(H(), h, w);
    SMX_UNROLL
    for (int i = 0; i < 8; i++) out[i] = h[i];
}

// The first `n` bytes of the big-endian words `v`.
template <class H>
SMX_HD void words_to_bytes(const typename H::W *v, u32 n, u8 *out) {
    for (u32 i = 0; i < n; i++) out[i] = (u8)(v[i / H::WB] >> (8 * (H::WB - 1 - i % H::WB)));
}

// One-shot hash of `n` bytes; `out` receives H::OUTB bytes.
template <class H>
SMX_HD void digest(const u8 *p, u32 n, u8 *out) {
    Ctx<H> c;
    begin<H>(c);
    update<H>(c, p, n);
    finish<H>(c);
    words_to_bytes<H>(c.h, H::OUTB, out);
}

}  // namespace sha2
}  // namespace smx
