// RSA-CRT signing by cooperating threads: T threads per CRT half, 2T per
// signature, each thread holding K = N/T limbs of every number.
//
// Why: the one-thread mapping (crt.cuh) keeps a whole N-limb number per
// thread and its 16-entry window table (16N words) in local memory, and
// needs ~216-255 registers. Here a thread's share of the table is 16K words
// (64 at RSA-2048 with T = 8), small enough for registers, so the
// constant-time table scan never touches memory, and more threads fit on an
// SM. The price is a few warp shuffles per multiplier limb. Which mapping is
// faster is measured on the GPU (scripts/gpu-bench.sh rsa-mapping).
//
// Layout in a warp: threads 2T*g .. 2T*g+2T-1 sign item g of the warp;
// the lower T of them compute mod p, the upper T mod q. Within a half,
// lane l holds limbs [lK, lK+K) of each N-limb number (little-endian).
//
// Montgomery multiplication (CIOS, one multiplier limb per row) runs on the
// half's lanes in lockstep: the multiplier limb and the row's quotient
// digit are broadcast by shuffle; each lane multiply-accumulates its K limbs
// into a K+2-word accumulator whose top two words are carries owed to the
// next lane up; shifting the accumulator down by one limb moves each lane's
// low word to the lane below and settles the owed carry there, so carries
// never run across lanes inside the row loop. After the last row the owed
// carries are resolved once, by carry-lookahead over ballots: each lane
// says whether it generates a carry and whether it would pass one on, and
// the carry into every lane comes out of one addition of the two masks.
//
// Constant time: same rules as the one-thread code. Lane numbers,
// positions and shuffle widths are public; every value derived from the key
// flows through branch-free arithmetic, masked selects and ballots (a
// ballot is data movement, not a branch). The window table is scanned whole.
#pragma once

#include "crt.cuh"
#include "lanes.cuh"

namespace smx {
namespace rsa {
namespace coop {

// Where a thread sits in its half-group of T lanes.
template <int T>
struct Place {
    static_assert(T >= 2 && T <= 16 && (T & (T - 1)) == 0, "T: 2, 4, 8 or 16 lanes per half");
    lane_t l;       // lane within the half, 0..T-1
    lane_t base;    // warp lane of the half's lane 0 (its bit in a ballot)
    lane_t top;     // all-ones on lane T-1
    lane_t bottom;  // all-ones on lane 0

    SMX_RSA_HDM explicit Place(const lane_t &warp_lane) {
        l = warp_lane & (u32)(T - 1);
        base = warp_lane - l;
        top = lane_eq(l, lane_t::all(T - 1));
        bottom = lane_eq(l, lane_t::all(0));
    }

    // This half's T bits of a warp ballot.
    SMX_RSA_HDM lane_t bits(const lane_t &pred) const {
        return (ballot(pred) >> base) & (u32)((1u << T) - 1);
    }

    // Carry-lookahead across the half: lane l generates a carry (g = 1)
    // or passes an incoming one on (p = 1; never both). Returns the carry
    // into each lane; `out` gets the carry out of lane T-1. With G and P
    // the lanes' bits, the carries in are ((G << 1) + P) ^ P: a generated
    // carry ripples through the run of propagating lanes above it exactly
    // as a binary addition does.
    SMX_RSA_HDM lane_t lookahead(const lane_t &g, const lane_t &p, lane_t &out) const {
        lane_t G = bits(g), P = bits(p);
        lane_t ci = ((G << 1) + P) ^ P;
        out = (ci >> (u32)T) & 1u;
        return (ci >> l) & 1u;
    }
};

// ------------------------------------------------------ a lane's K limbs

// r = a + b; returns the carry out (0 or 1).
template <int K>
SMX_RSA_HDM lane_t add_k(lane_t *r, const lane_t *a, const lane_t *b) {
    lane_t c;
    add_cc(r[0], a[0], b[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) addc_cc(r[j], a[j], b[j]);
    addc(c, lane_t::all(0), lane_t::all(0));
    return c;
}

// r = a - b; returns the borrow out (0 or 1).
template <int K>
SMX_RSA_HDM lane_t sub_k(lane_t *r, const lane_t *a, const lane_t *b) {
    lane_t m;
    sub_cc(r[0], a[0], b[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) subc_cc(r[j], a[j], b[j]);
    subc(m, lane_t::all(0), lane_t::all(0));  // all-ones on a borrow
    return m & 1u;
}

// r += c (any word); returns the carry out (0 or 1).
template <int K>
SMX_RSA_HDM lane_t inc_k(lane_t *r, const lane_t &c) {
    lane_t z = lane_t::all(0), out;
    add_cc(r[0], r[0], c);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) addc_cc(r[j], r[j], z);
    addc(out, z, z);
    return out;
}

// r -= b (0 or 1).
template <int K>
SMX_RSA_HDM void dec_k(lane_t *r, const lane_t &b) {
    lane_t z = lane_t::all(0);
    sub_cc(r[0], r[0], b);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) subc_cc(r[j], r[j], z);
}

// 1 when every limb is all-ones, else 0.
template <int K>
SMX_RSA_HDM lane_t all_ones_k(const lane_t *r) {
    lane_t acc = r[0];
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) acc = acc & r[j];
    return lane_eq(acc, lane_t::all(0xffffffffu)) & 1u;
}

// 1 when every limb is zero, else 0.
template <int K>
SMX_RSA_HDM lane_t all_zero_k(const lane_t *r) {
    lane_t acc = r[0];
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) acc = acc | r[j];
    return lane_eq(acc, lane_t::all(0)) & 1u;
}

// t[0..K+2) += a[0..K) * b: a lo chain and a hi chain, as arith.cuh's
// mac_row. The caller keeps the sum within K+2 words.
template <int K>
SMX_RSA_HDM void mac_k(lane_t *t, const lane_t *a, const lane_t &b) {
    const lane_t z = lane_t::all(0);
    mad_lo_cc(t[0], a[0], b, t[0]);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) madc_lo_cc(t[j], a[j], b, t[j]);
    addc_cc(t[K], t[K], z);
    addc(t[K + 1], t[K + 1], z);
    mad_hi_cc(t[1], a[0], b, t[1]);
    SMX_RSA_UNROLL
    for (int j = 1; j < K; j++) madc_hi_cc(t[j + 1], a[j], b, t[j + 1]);
    addc(t[K + 1], t[K + 1], z);
}

template <int K>
SMX_RSA_HDM void select_k(lane_t *r, const lane_t &mask, const lane_t *a, const lane_t *b) {
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) r[j] = lane_select(mask, a[j], b[j]);
}

// -------------------------------------- N-limb numbers across a half-group

// A modulus of the half (p on the lower half, q on the upper) and its
// Montgomery constants, this lane's K limbs of each in registers.
template <int N, int T>
struct Field {
    static constexpr int K = N / T;
    static_assert(K * T == N, "T must divide the limb count");
    Place<T> at;
    lane_t m[K];   // the modulus
    lane_t rr[K];  // R^2 mod m, R = 2^(32N)
    lane_t m0;     // -m^-1 mod 2^32

    // The limbs are loaded by the caller (sign_thread), which knows where.
    SMX_RSA_HDM explicit Field(const Place<T> &place) : at(place) {}

    // r = a + b (N limbs); returns the carry out, the same in every lane.
    SMX_RSA_HDM lane_t add(lane_t *r, const lane_t *a, const lane_t *b) const {
        lane_t g = add_k<K>(r, a, b), out;
        inc_k<K>(r, at.lookahead(g, all_ones_k<K>(r), out));
        return out;
    }

    // r = a - b (N limbs); returns the borrow out, the same in every lane.
    SMX_RSA_HDM lane_t sub(lane_t *r, const lane_t *a, const lane_t *b) const {
        lane_t g = sub_k<K>(r, a, b), out;
        dec_k<K>(r, at.lookahead(g, all_zero_k<K>(r), out));
        return out;
    }

    // Moves the accumulator down one limb: each lane's low word to the lane
    // below (lane 0's, the row's outgoing word, leaves), and the carry this
    // lane owes the next (t[K], t[K+1], at the bottom of the lane above)
    // settles into the new top limb, where the lane above's word arrives.
    SMX_RSA_HDM void shift_down(lane_t *t) const {
        lane_t in = shfl_down(t[0], 1, T) & ~at.top;
        SMX_RSA_UNROLL
        for (int j = 0; j + 1 < K; j++) t[j] = t[j + 1];
        add_cc(t[K - 1], in, t[K]);
        addc(t[K], t[K + 1], lane_t::all(0));
        t[K + 1] = lane_t::all(0);
    }

    // Settles the carries the lanes owe each other (t[K], each below 2^32)
    // into t[0..K); returns the word above the N limbs.
    SMX_RSA_HDM lane_t settle(lane_t *t) const {
        lane_t c = t[K];
        lane_t in = shfl_up(c, 1, T) & ~at.bottom;
        lane_t above = shfl(c, T - 1, T);
        lane_t g = inc_k<K>(t, in), out;
        inc_k<K>(t, at.lookahead(g, all_ones_k<K>(t), out));
        return above + out;
    }

    // r = a * b * R^-1 mod m, for a < R and b < m (CIOS; r may alias a or b).
    SMX_RSA_HDM void mul(lane_t *r, const lane_t *a, const lane_t *b) const {
        lane_t t[K + 2];
        SMX_RSA_UNROLL
        for (int j = 0; j < K + 2; j++) t[j] = lane_t::all(0);
        SMX_RSA_NO_UNROLL
        for (int src = 0; src < T; src++) {
            SMX_RSA_UNROLL
            for (int k = 0; k < K; k++) {
                mac_k<K>(t, a, shfl(b[k], src, T));
                mac_k<K>(t, m, shfl(t[0], 0, T) * m0);
                shift_down(t);
            }
        }
        // t < 2m: keep t when it is below m (nothing above the N limbs and
        // a borrow from t - m), else t - m.
        lane_t above = settle(t);
        lane_t d[K];
        lane_t borrow = sub(d, t, m);
        select_k<K>(r, lane_eq(above, lane_t::all(0)) & lane_nonzero(borrow), t, d);
    }

    // r = a mod m, for a < 2m.
    SMX_RSA_HDM void reduce_once(lane_t *r, const lane_t *a) const {
        lane_t d[K];
        lane_t borrow = sub(d, a, m);
        select_k<K>(r, lane_nonzero(borrow), a, d);
    }

    // r = (a + b) mod m, for a, b < m.
    SMX_RSA_HDM void mod_add(lane_t *r, const lane_t *a, const lane_t *b) const {
        lane_t s[K], d[K];
        lane_t carry = add(s, a, b);
        lane_t borrow = sub(d, s, m);
        select_k<K>(r, lane_nonzero(borrow) & ~lane_nonzero(carry), s, d);
    }

    // r = (a - b) mod m, for a, b < m.
    SMX_RSA_HDM void mod_sub(lane_t *r, const lane_t *a, const lane_t *b) const {
        lane_t d[K], mm[K];
        lane_t borrow = lane_nonzero(sub(d, a, b));
        SMX_RSA_UNROLL
        for (int j = 0; j < K; j++) mm[j] = m[j] & borrow;
        add(r, d, mm);
    }

    // r = a * R mod m, for any N-limb a.
    SMX_RSA_HDM void to_mont(lane_t *r, const lane_t *a) const { mul(r, a, rr); }

    // r = a * R^-1 mod m: the plain value of a Montgomery-form a.
    SMX_RSA_HDM void to_plain(lane_t *r, const lane_t *a) const {
        lane_t one[K];
        one[0] = at.bottom & 1u;
        SMX_RSA_UNROLL
        for (int j = 1; j < K; j++) one[j] = lane_t::all(0);
        mul(r, a, one);
    }

    // r = R mod m, the Montgomery form of 1: R - m, the two's complement of
    // m, reduced once more for moduli below R/2 (m > R/3: RSA's p and q
    // have their top bit set; the EC kernels' shared inversion also takes
    // 2^255 - 19).
    SMX_RSA_HDM void one(lane_t *r) const {
        lane_t z[K];
        SMX_RSA_UNROLL
        for (int j = 0; j < K; j++) z[j] = lane_t::all(0);
        sub(r, z, m);
        reduce_once(r, r);
    }
};

// acc = x^exp mod m in Montgomery form, for a secret exponent of N limbs
// at key[exp_at + ...] (exp_at differs between the halves: dp or dq). Fixed
// 4-bit windows over all 32N bits, every table entry read for each window
// (modexp.cuh's method, with the table in registers: all its indices are
// compile-time constants).
template <int N, int T>
SMX_RSA_HDM void pow_ct(const Field<N, T> &F, lane_t *acc, const lane_t *x, const u32 *key,
                        const lane_t &exp_at) {
    constexpr int K = N / T;
    constexpr int W = 32 * N / kWindow;
    constexpr int PER_WORD = 32 / kWindow;
    lane_t table[kTable][K];
    F.one(table[0]);
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) table[1][j] = x[j];
    SMX_RSA_UNROLL
    for (int e = 2; e < kTable; e++) F.mul(table[e], table[e - 1], x);

    lane_t y[K];
    SMX_RSA_NO_UNROLL
    for (int w = W - 1; w >= 0; w--) {
        // The window's bits: every lane of the half reads the same word.
        lane_t idx = (lane_load(key, exp_at + (u32)(w / PER_WORD)) >> (u32)((w % PER_WORD) * kWindow)) &
                     (u32)(kTable - 1);
        SMX_RSA_UNROLL
        for (int j = 0; j < K; j++) y[j] = lane_t::all(0);
        SMX_RSA_UNROLL
        for (int e = 0; e < kTable; e++) {
            lane_t hit = lane_eq(idx, lane_t::all(e));
            SMX_RSA_UNROLL
            for (int j = 0; j < K; j++) y[j] = y[j] | (table[e][j] & hit);
        }
        if (w == W - 1) {
            // The top window starts the accumulator (public: w only).
            SMX_RSA_UNROLL
            for (int j = 0; j < K; j++) acc[j] = y[j];
            continue;
        }
        SMX_RSA_NO_UNROLL
        for (int s = 0; s < kWindow; s++) F.mul(acc, acc, acc);
        F.mul(acc, acc, y);
    }
}

// One thread's part in signing: the kernel rsa{B}_sign_coop{T} and the host
// build run exactly this, once per thread (a lane_t of a whole warp on the
// host). `thread` is the global thread number; item thread / 2T. Threads
// past the last item work on the last item and store nothing, so whole
// warps stay converged for the shuffles. Requires count >= 1 and
// count * 2T < 2^32.
//
//   sp = x^dp mod p (lower half), sq = x^dq mod q (upper half);
//   the halves swap results by shuffle; the lower half then computes
//   h = (sp - sq) * qinv mod p and s = sq + q * h (Garner), and stores s.
template <int N, int T>
SMX_RSA_HDM void sign_thread(const u32 *key, const u32 *in, u32 *out, u32 count,
                             const lane_t &thread) {
    typedef KeyLayout<N> KL;
    constexpr int K = N / T;
    lane_t item = thread / (u32)(2 * T);
    lane_t valid = lane_lt(item, lane_t::all(count));
    item = lane_select(valid, item, lane_t::all(count - 1));
    lane_t upper = lane_nonzero((thread / (u32)T) & 1u);  // the q half

    Field<N, T> F{Place<T>(thread & (u32)(kWarp - 1))};
    lane_t mine = F.at.l * (u32)K;  // this lane's first limb
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) {
        F.m[j] = lane_load(key, lane_select(upper, lane_t::all(KL::Q), lane_t::all(KL::P)) + mine + (u32)j);
        F.rr[j] = lane_load(key, lane_select(upper, lane_t::all(KL::RR_Q), lane_t::all(KL::RR_P)) + mine + (u32)j);
    }
    F.m0 = lane_load(key, lane_select(upper, lane_t::all(KL::Q0), lane_t::all(KL::P0)));

    // x mod m in Montgomery form, x = hi * R + lo: hi * R^2 * R^-1 = hi * R
    // is the high half's contribution (as crt.cuh's reduce_to_mont).
    lane_t lo[K], hi[K], xm[K];
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) {
        lo[j] = lane_load_soa(in, count, mine + (u32)j, item);
        hi[j] = lane_load_soa(in, count, mine + (u32)(N + j), item);
    }
    F.to_mont(hi, hi);
    F.reduce_once(lo, lo);
    F.mod_add(lo, lo, hi);
    F.to_mont(xm, lo);

    lane_t acc[K], plain[K], other[K];
    pow_ct<N, T>(F, acc, xm, key, lane_select(upper, lane_t::all(KL::DQ), lane_t::all(KL::DP)));
    F.to_plain(plain, acc);
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) other[j] = shfl_xor(plain[j], T, 2 * T);

    // Lower half: other = sq < q < 2p, so to_mont reduces it; acc - sq*R is
    // (sp - sq) in Montgomery form and qinv is plain, so their Montgomery
    // product is the plain h. (The upper half computes the same steps on
    // its own numbers and throws them away: shuffles need every lane.)
    lane_t h[K], q[K];
    F.to_mont(h, other);
    F.mod_sub(h, acc, h);
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) {
        q[j] = lane_load(key, lane_t::all(KL::QINV) + mine + (u32)j);
    }
    F.mul(h, h, q);

    // s = sq + q * h < n, schoolbook with the accumulator preloaded with sq:
    // row i's outgoing word is limb i of s, kept by the lane that owns it.
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) q[j] = lane_load(key, lane_t::all(KL::Q) + mine + (u32)j);
    lane_t t[K + 2], s[K];
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) {
        t[j] = other[j];
        s[j] = lane_t::all(0);
    }
    t[K] = t[K + 1] = lane_t::all(0);
    SMX_RSA_NO_UNROLL
    for (int src = 0; src < T; src++) {
        lane_t owner = lane_eq(F.at.l, lane_t::all(src));
        SMX_RSA_UNROLL
        for (int k = 0; k < K; k++) {
            mac_k<K>(t, q, shfl(h[k], src, T));
            s[k] = lane_select(owner, shfl(t[0], 0, T), s[k]);
            F.shift_down(t);
        }
    }
    F.settle(t);  // nothing above 2N limbs: s < n

    lane_t store = valid & ~upper;
    SMX_RSA_UNROLL
    for (int j = 0; j < K; j++) {
        lane_store_soa(out, count, mine + (u32)j, item, s[j], store);
        lane_store_soa(out, count, mine + (u32)(N + j), item, t[j], store);
    }
}

}  // namespace coop
}  // namespace rsa
}  // namespace smx
