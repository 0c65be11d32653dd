// HMAC (RFC 2104) over the SHA-2 family of sha256.cuh / sha512.cuh.
//
// A key is kept as its two pad midstates (the inner and outer chaining values
// after the key block), so each MAC under it costs only the message blocks
// plus one outer block. Keys up to a block are used as is, longer ones are
// hashed first (RFC 2104 section 2). Constant time in key and message
// contents; lengths are public.
#pragma once

#include "sha256.cuh"
#include "sha512.cuh"

namespace smx {
namespace hmac {

template <class H>
struct Key {
    typename H::W ih[8];  // after compressing key ^ ipad
    typename H::W oh[8];  // after compressing key ^ opad
};

// Both midstates from the key block `kb` (key words, zero padded).
template <class H>
SMX_HD void set_key_block(Key<H> &k, const typename H::W kb[16]) {
    typedef typename H::W W;
    const W ipad = (W)0x3636363636363636ull, opad = (W)0x5c5c5c5c5c5c5c5cull;
    W b[16];
    SMX_UNROLL
    for (int i = 0; i < 16; i++) b[i] = kb[i] ^ ipad;
    init(H(), k.ih);
    compress(H(), k.ih, b);
    SMX_UNROLL
    for (int i = 0; i < 16; i++) b[i] = kb[i] ^ opad;
    init(H(), k.oh);
    compress(H(), k.oh, b);
}

// Key = a digest kept as words (the first H::OUTW of `kw`): RFC 6979's K.
template <class H>
SMX_HD void set_key_words(Key<H> &k, const typename H::W *kw) {
    typename H::W kb[16];
    SMX_UNROLL
    for (int i = 0; i < (int)H::OUTW; i++) kb[i] = kw[i];
    SMX_UNROLL
    for (int i = H::OUTW; i < 16; i++) kb[i] = 0;
    set_key_block<H>(k, kb);
}

// Key = `n` bytes, any length.
template <class H>
SMX_HD void set_key(Key<H> &k, const u8 *key, u32 n) {
    typedef typename H::W W;
    if (n > (u32)H::BLOCK) {
        sha2::Ctx<H> c;
        sha2::begin<H>(c);
        sha2::update<H>(c, key, n);
        sha2::finish<H>(c);
        set_key_words<H>(k, c.h);
        return;
    }
    W kb[16];
    sha2::clear_block<H>(kb);
    for (u32 i = 0; i < n; i++) kb[i / H::WB] |= (W)key[i] << (8 * (H::WB - 1 - i % H::WB));
    set_key_block<H>(k, kb);
}

// Streaming MAC: start, sha2::update / update_words / put_byte, then finish.
template <class H>
SMX_HD void start_mac(sha2::Ctx<H> &c, const Key<H> &k) {
    sha2::start<H>(c, k.ih, H::BLOCK);
}

// The tag, as digest words (first H::OUTW of `out`).
template <class H>
SMX_HD void finish_mac(sha2::Ctx<H> &c, const Key<H> &k, typename H::W out[8]) {
    sha2::finish<H>(c);
    sha2::hash_digest_block<H>(k.oh, H::BLOCK, c.h, false, out);
}

// MAC of one digest-sized message `v` (words), followed by one zero byte
// when `extra_zero`: two compressions in all. `out` may alias `v`.
template <class H>
SMX_HD void mac_digest(const Key<H> &k, const typename H::W *v, bool extra_zero,
                       typename H::W out[8]) {
    typename H::W t[8];
    sha2::hash_digest_block<H>(k.ih, H::BLOCK, v, extra_zero, t);
    sha2::hash_digest_block<H>(k.oh, H::BLOCK, t, false, out);
}

// One-shot MAC of `n` bytes under a key of `kn` bytes; H::OUTB bytes out.
template <class H>
SMX_HD void mac(const u8 *key, u32 kn, const u8 *msg, u32 n, u8 *out) {
    Key<H> k;
    set_key<H>(k, key, kn);
    sha2::Ctx<H> c;
    start_mac<H>(c, k);
    sha2::update<H>(c, msg, n);
    typename H::W t[8];
    finish_mac<H>(c, k, t);
    sha2::words_to_bytes<H>(t, H::OUTB, out);
}

}  // namespace hmac
}  // namespace smx
