// A per-thread value of a cooperative kernel, as a type: `lane_t`.
//
// The cooperative RSA kernels (rsa/coop.cuh) spread one number over the
// threads of a group and talk across them with warp shuffles and ballots.
// To test that code without a GPU, every value a thread holds is a lane_t:
// on the device it is the thread's own 32-bit word; in the host build it is
// the 32 words of a whole warp, every operator acts on all 32 lanes, and
// shuffles and ballots move words between them the way the hardware does.
// The same source then runs on both, and the host run is the warp the GPU
// would run, lane for lane.
//
// Carry chains: on the device the PTX instructions of arith.cuh (add.cc,
// mad.lo.cc, ...); on the host an emulation with one carry flag per lane.
//
// Constant time: every operator is branch-free arithmetic on all lanes;
// shuffles and ballots take lane numbers and widths that are public (thread
// positions), never data.
#pragma once

#include "arith.cuh"

#if defined(__CUDA_ARCH__)
#define SMX_LANES 1
#else
#define SMX_LANES 32
#endif

namespace smx {
namespace rsa {

// Warp width: shuffles and ballots span this many threads.
constexpr int kWarp = 32;

struct lane_t {
    u32 x[SMX_LANES];

    // The same word in every lane.
    SMX_RSA_HDM static lane_t all(u32 v) {
        lane_t r;
        for (int w = 0; w < SMX_LANES; w++) r.x[w] = v;
        return r;
    }

#define SMX_LANE_BINOP(op)                                                       \
    SMX_RSA_HDM friend lane_t operator op(lane_t a, const lane_t &b) {           \
        for (int w = 0; w < SMX_LANES; w++) a.x[w] = a.x[w] op b.x[w];           \
        return a;                                                                \
    }                                                                            \
    SMX_RSA_HDM friend lane_t operator op(lane_t a, u32 b) {                     \
        for (int w = 0; w < SMX_LANES; w++) a.x[w] = a.x[w] op b;                \
        return a;                                                                \
    }
    SMX_LANE_BINOP(+)
    SMX_LANE_BINOP(-)
    SMX_LANE_BINOP(*)
    SMX_LANE_BINOP(/)
    SMX_LANE_BINOP(&)
    SMX_LANE_BINOP(|)
    SMX_LANE_BINOP(^)
    SMX_LANE_BINOP(<<)
    SMX_LANE_BINOP(>>)
#undef SMX_LANE_BINOP

    SMX_RSA_HDM friend lane_t operator~(lane_t a) {
        for (int w = 0; w < SMX_LANES; w++) a.x[w] = ~a.x[w];
        return a;
    }
};

// All-ones where a == b, per lane.
SMX_RSA_HDM lane_t lane_eq(lane_t a, const lane_t &b) {
    for (int w = 0; w < SMX_LANES; w++) a.x[w] = mask_eq(a.x[w], b.x[w]);
    return a;
}

// All-ones where a != 0, per lane.
SMX_RSA_HDM lane_t lane_nonzero(lane_t a) {
    for (int w = 0; w < SMX_LANES; w++) a.x[w] = mask_from(a.x[w]);
    return a;
}

// All-ones where a < b (unsigned), per lane.
SMX_RSA_HDM lane_t lane_lt(lane_t a, const lane_t &b) {
    for (int w = 0; w < SMX_LANES; w++) a.x[w] = (u32)(((u64)a.x[w] - b.x[w]) >> 32);
    return a;
}

// `a` where mask is all-ones, `b` where it is zero, per lane.
SMX_RSA_HDM lane_t lane_select(const lane_t &mask, lane_t a, const lane_t &b) {
    for (int w = 0; w < SMX_LANES; w++) a.x[w] = select(mask.x[w], a.x[w], b.x[w]);
    return a;
}

// base[offset] per lane (the offsets are public: positions, not data).
SMX_RSA_HDM lane_t lane_load(const u32 *base, const lane_t &offset) {
    lane_t r;
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = base[offset.x[w]];
    return r;
}

// Word `limb` of item `item` of a structure-of-arrays batch of `count`
// items: base[limb * count + item], per lane.
SMX_RSA_HDM lane_t lane_load_soa(const u32 *base, u64 count, const lane_t &limb,
                                 const lane_t &item) {
    lane_t r;
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = base[(u64)limb.x[w] * count + item.x[w]];
    return r;
}

// base[limb * count + item] = v in the lanes where `store` is nonzero (a
// public condition: which threads own the output).
SMX_RSA_HDM void lane_store_soa(u32 *base, u64 count, const lane_t &limb, const lane_t &item,
                                const lane_t &v, const lane_t &store) {
    for (int w = 0; w < SMX_LANES; w++)
        if (store.x[w]) base[(u64)limb.x[w] * count + item.x[w]] = v.x[w];
}

// ---------------------------------------------------------------- shuffles
//
// Lanes form segments of `width` (a power of two dividing 32); lane numbers
// are relative to the segment, as in CUDA's __shfl_*_sync. Every thread of
// the warp takes part (the kernels keep the whole warp converged).

// The word of lane `src` of this lane's segment.
SMX_RSA_HDM lane_t shfl(const lane_t &v, int src, int width) {
    lane_t r;
#if defined(__CUDA_ARCH__)
    r.x[0] = __shfl_sync(0xffffffffu, v.x[0], src, width);
#else
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = v.x[(w & ~(width - 1)) + (src & (width - 1))];
#endif
    return r;
}

// The word of the lane `delta` above in the segment; the top `delta` lanes
// keep their own.
SMX_RSA_HDM lane_t shfl_down(const lane_t &v, int delta, int width) {
    lane_t r;
#if defined(__CUDA_ARCH__)
    r.x[0] = __shfl_down_sync(0xffffffffu, v.x[0], delta, width);
#else
    for (int w = 0; w < SMX_LANES; w++)
        r.x[w] = (w & (width - 1)) + delta < width ? v.x[w + delta] : v.x[w];
#endif
    return r;
}

// The word of the lane `delta` below in the segment; the bottom `delta`
// lanes keep their own.
SMX_RSA_HDM lane_t shfl_up(const lane_t &v, int delta, int width) {
    lane_t r;
#if defined(__CUDA_ARCH__)
    r.x[0] = __shfl_up_sync(0xffffffffu, v.x[0], delta, width);
#else
    for (int w = 0; w < SMX_LANES; w++)
        r.x[w] = (w & (width - 1)) >= delta ? v.x[w - delta] : v.x[w];
#endif
    return r;
}

// The word of lane (this lane xor m) of the segment.
SMX_RSA_HDM lane_t shfl_xor(const lane_t &v, int m, int width) {
    lane_t r;
#if defined(__CUDA_ARCH__)
    r.x[0] = __shfl_xor_sync(0xffffffffu, v.x[0], m, width);
#else
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = v.x[w ^ (m & (width - 1))];
#endif
    return r;
}

// Bit w set when lane w of the warp has a nonzero word; the same 32-bit
// mask in every lane.
SMX_RSA_HDM lane_t ballot(const lane_t &pred) {
#if defined(__CUDA_ARCH__)
    return lane_t::all(__ballot_sync(0xffffffffu, pred.x[0] != 0));
#else
    u32 b = 0;
    for (int w = 0; w < SMX_LANES; w++) b |= (u32)(pred.x[w] != 0) << w;
    return lane_t::all(b);
#endif
}

// ------------------------------------------------------------ carry chains
//
// One function per PTX instruction, as in arith.cuh. Nothing between two
// calls of a chain may write the carry flag; shuffles and ballots do not.

#if defined(__CUDA_ARCH__)
SMX_RSA_HDM void add_cc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_ADD_CC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void addc_cc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_ADDC_CC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void addc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_ADDC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void sub_cc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_SUB_CC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void subc_cc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_SUBC_CC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void subc(lane_t &d, const lane_t &a, const lane_t &b) { SMX_RSA_SUBC(d.x[0], a.x[0], b.x[0]); }
SMX_RSA_HDM void mad_lo_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    SMX_RSA_MAD_LO_CC(d.x[0], a.x[0], b.x[0], c.x[0]);
}
SMX_RSA_HDM void madc_lo_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    SMX_RSA_MADC_LO_CC(d.x[0], a.x[0], b.x[0], c.x[0]);
}
SMX_RSA_HDM void mad_hi_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    SMX_RSA_MAD_HI_CC(d.x[0], a.x[0], b.x[0], c.x[0]);
}
SMX_RSA_HDM void madc_hi_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    SMX_RSA_MADC_HI_CC(d.x[0], a.x[0], b.x[0], c.x[0]);
}
#else
namespace lanes_emu {
// The carry flag of each lane. Thread-local: tests sign on several threads.
inline thread_local u32 cf[SMX_LANES];

// d = x + y (+ the lane's flag when `cin`), setting the flag when `set`.
inline void add(lane_t &d, const lane_t &x, const lane_t &y, bool cin, bool set) {
    for (int w = 0; w < SMX_LANES; w++) {
        u64 t = (u64)x.x[w] + y.x[w] + (cin ? cf[w] : 0);
        if (set) cf[w] = (u32)(t >> 32);
        d.x[w] = (u32)t;
    }
}
inline void sub(lane_t &d, const lane_t &x, const lane_t &y, bool bin, bool set) {
    for (int w = 0; w < SMX_LANES; w++) {
        u64 t = (u64)x.x[w] - y.x[w] - (bin ? cf[w] : 0);
        if (set) cf[w] = (u32)(t >> 63);
        d.x[w] = (u32)t;
    }
}
inline lane_t lo(const lane_t &a, const lane_t &b) {
    lane_t r;
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = (u32)((u64)a.x[w] * b.x[w]);
    return r;
}
inline lane_t hi(const lane_t &a, const lane_t &b) {
    lane_t r;
    for (int w = 0; w < SMX_LANES; w++) r.x[w] = (u32)(((u64)a.x[w] * b.x[w]) >> 32);
    return r;
}
}  // namespace lanes_emu
inline void add_cc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::add(d, a, b, false, true); }
inline void addc_cc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::add(d, a, b, true, true); }
inline void addc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::add(d, a, b, true, false); }
inline void sub_cc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::sub(d, a, b, false, true); }
inline void subc_cc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::sub(d, a, b, true, true); }
inline void subc(lane_t &d, const lane_t &a, const lane_t &b) { lanes_emu::sub(d, a, b, true, false); }
inline void mad_lo_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    lanes_emu::add(d, lanes_emu::lo(a, b), c, false, true);
}
inline void madc_lo_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    lanes_emu::add(d, lanes_emu::lo(a, b), c, true, true);
}
inline void mad_hi_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    lanes_emu::add(d, lanes_emu::hi(a, b), c, false, true);
}
inline void madc_hi_cc(lane_t &d, const lane_t &a, const lane_t &b, const lane_t &c) {
    lanes_emu::add(d, lanes_emu::hi(a, b), c, true, true);
}
#endif

}  // namespace rsa
}  // namespace smx
