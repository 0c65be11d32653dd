// A stand-in for the CUDA driver (libcuda.so), for running sigmux's CUDA
// backend on a machine without a GPU. This is a mock, and says so: the
// device name it reports is "sigmux fake CUDA driver (host emulation)".
//
// What it is for: the host side of src/backend/cuda/ (contexts, modules
// loaded from NVRTC's real CUBINs, key slots in constant memory, buffers,
// pinned memory, streams, launches, the device check, the key cache) has
// otherwise never run before it meets a real GPU. Here every kernel launch
// runs the kernels' own host build (kernels/host/*.cpp: the same headers
// NVRTC compiles), so the whole backend signs, checks and quarantines as it
// would on a device, and tests/cuda.rs's device tests run unchanged.
//
// It is strict where a GPU would be unforgiving or silent:
// - work on a stream runs only when the host synchronises with it (a
//   stream, an event, a synchronous copy): a result read before its stream
//   is synchronised is still the fill pattern, as on a busy GPU;
// - new device memory is filled with 0xA5 bytes, never zeroes;
// - every copy, memset and kernel argument must lie inside one live
//   allocation of the right kind (device memory for kernels and device
//   sides of copies) and be long enough for the launch's `count`;
// - memory that held a private key or nonces (kernel arguments, a key's
//   copy into constant memory) must be zeroes again when it is freed, when
//   its module is unloaded and at exit (DESIGN.md: keys are wiped from
//   device memory);
// - kernel names must be in the loaded image, launch shapes must be what
//   each kernel's comment in kernels/*.cu asks for (whole warps, enough
//   threads for the nonce kernels, one-dimensional grids);
// - a violation is printed on stderr as "fake-cuda: VIOLATION: ..." and
//   makes the context fail with CUDA_ERROR_ILLEGAL_ADDRESS from then on,
//   the way a device fault does.
// What it cannot show: timing, concurrency between streams on the device,
// the PTX itself (tests/nvrtc.rs and ptx_check.rs cover that).
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned int u32;

enum : CUresult {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_FAILED = 719,
    NOT_SUPPORTED = 801,
};

// The kernels' host builds (kernels/host/*.cpp).
extern "C" {
int smx_rsa_sign_emu_host(u32 bits, const u32 *key, const u32 *in, u32 *out, u32 count);
int smx_rsa_sign_wide_emu_host(u32 bits, const u32 *key, const u32 *in, u32 *out, u32 count);
int smx_rsa_sign_coop_host(u32 bits, u32 lanes, const u32 *key, const u32 *in, u32 *out,
                           u32 count);
int smx_rsa_check_host(u32 bits, const u32 *key, const u32 *sig, const u32 *expected, u32 *ok,
                       u32 count);
void smx_p256_sign_host(const u32 *table, const u32 *key, const u32 *z, const u32 *k, u32 *r,
                        u32 *s, u32 *ok, u32 count);
void smx_p384_sign_host(const u32 *table, const u32 *key, const u32 *z, const u32 *k, u32 *r,
                        u32 *s, u32 *ok, u32 count);
void smx_p256_check_host(const u32 *table, const u32 *key, const u32 *z, const u32 *r,
                         const u32 *s, u32 *ok, u32 count);
void smx_p384_check_host(const u32 *table, const u32 *key, const u32 *z, const u32 *r,
                         const u32 *s, u32 *ok, u32 count);
void smx_p256_nonce_host(const u32 *key, const u32 *z, const unsigned char *seed, u32 *k, u32 *ok,
                         u32 count);
void smx_p384_nonce_host(const u32 *key, const u32 *z, const unsigned char *seed, u32 *k, u32 *ok,
                         u32 count);
void smx_ed25519_sign_host(const u32 *table, const u32 *key, const unsigned char *msg,
                           const u32 *off, u32 *sig, u32 *ok, u32 count);
void smx_ed25519_check_host(const u32 *table, const u32 *key, const unsigned char *msg,
                            const u32 *off, const u32 *sig, u32 *ok, u32 count);
}

namespace {

// Sizes from kernels/rsa/crt.cuh and src/backend/cuda/{device,*_layout}.rs.
constexpr size_t kKeySlots = 16, kKeySlotWords = 768;
constexpr const char *kKeySlotsSymbol = "smx_rsa_key_slots";
constexpr int kSms = 4;

std::recursive_mutex mu;
CUresult sticky = OK;  // a device fault: every later call fails
bool initialised = false;
bool fault_armed = false;  // sigmux_fake_cuda_fault_next_launch

void violation(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "fake-cuda: VIOLATION: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    sticky = ILLEGAL_ADDRESS;
}

enum class Kind { Device, Global, Pinned };
struct Alloc {
    size_t size;
    Kind kind;
    // Byte ranges (offset, length) that held a private key or nonces: they
    // must be zeroes again before the memory is freed (DESIGN.md: keys are
    // wiped from device memory).
    std::vector<std::pair<size_t, size_t>> secrets;
};
// Live allocations by base address (device pointers are host addresses).
std::map<uintptr_t, Alloc> allocs;

// The allocation holding [p, p + n), if it is one of `kind` (Global counts
// as Device memory).
const Alloc *find(uintptr_t p, size_t n, bool device) {
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return nullptr;
    --it;
    const Alloc &a = it->second;
    if (p < it->first || p - it->first > a.size || n > a.size - (p - it->first)) return nullptr;
    if (device != (a.kind != Kind::Pinned)) return nullptr;
    return &a;
}

bool check_device(const char *what, uintptr_t p, size_t n) {
    if (find(p, n, true)) return true;
    violation("%s: device range 0x%llx + %zu bytes is not inside one live device allocation", what,
              (unsigned long long)p, n);
    return false;
}

void *alloc_filled(size_t n, Kind kind) {
    void *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
    if (!p) return nullptr;
    std::memset(p, 0xA5, n);
    allocs[(uintptr_t)p] = Alloc{n, kind};
    return p;
}

bool all_zero(const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    unsigned char acc = 0;
    for (size_t i = 0; i < n; i++) acc |= b[i];
    return acc == 0;
}

bool free_alloc(uintptr_t p, Kind kind, const char *what) {
    auto it = allocs.find(p);
    if (it == allocs.end() || (it->second.kind == Kind::Pinned) != (kind == Kind::Pinned) ||
        it->second.kind == Kind::Global) {
        violation("%s: 0x%llx is not a live allocation of this kind", what, (unsigned long long)p);
        return false;
    }
    for (auto [off, len] : it->second.secrets)
        if (!all_zero((const void *)(p + off), len)) {
            violation("%s: %zu bytes at 0x%llx + %zu held a key or nonces and were freed without "
                      "being wiped",
                      what, len, (unsigned long long)p, off);
            return false;
        }
    std::memset((void *)p, 0x5A, it->second.size);  // use after free shows
    allocs.erase(it);
    std::free((void *)p);
    return true;
}

// At exit: device memory that still holds a key or nonces (the process
// ended without the backend wiping it).
struct ExitCheck {
    ~ExitCheck() {
        std::lock_guard<std::recursive_mutex> g(mu);
        if (sticky != OK) return;  // a dead context cannot be wiped
        for (auto &a : allocs)
            for (auto [off, len] : a.second.secrets)
                if (!all_zero((const void *)(a.first + off), len))
                    std::fprintf(stderr,
                                 "fake-cuda: VIOLATION: at exit, %zu bytes at 0x%llx + %zu still hold "
                                 "a key or nonces\n",
                                 len, (unsigned long long)a.first, off);
    }
} exit_check;

struct Event;
struct Stream {
    // Work not yet run, in order.
    std::deque<std::function<void()>> work;
};
struct Event {
    Stream *stream = nullptr;  // where it was last recorded
    unsigned long long seq = 0, done = 0;
};
Stream null_stream;
std::vector<std::unique_ptr<Stream>> streams;

Stream *stream_of(void *h) { return h ? (Stream *)h : &null_stream; }

// Runs a stream's work, in order, until `until` says stop (checked before
// each item) or the queue is empty.
void run(Stream *s, const std::function<bool()> &until = [] { return false; }) {
    while (!s->work.empty() && !until()) {
        auto f = std::move(s->work.front());
        s->work.pop_front();
        f();
    }
}

void run_all() {
    run(&null_stream);
    for (auto &s : streams) run(s.get());
}

struct Module {
    std::string image;
    void *slots = nullptr;  // smx_rsa_key_slots when the image has it
};
std::vector<std::unique_ptr<Module>> modules;

enum class K { RsaSlot, RsaWide, RsaCoop, RsaCheck, EcSign, EcCheck, Nonce, EdSign, EdCheck };
struct Function {
    std::string name;
    Module *module;
    K kind;
    u32 bits = 0;   // RSA size, or curve size (256, 384)
    u32 lanes = 0;  // coop: threads per CRT half
};
std::vector<std::unique_ptr<Function>> functions;

// What kernel `name` is, or false when this driver cannot run it.
bool classify(const std::string &name, Function &f) {
    unsigned b = 0, t = 0;
    char rest[32] = {0};
    if (std::sscanf(name.c_str(), "rsa%u_sign_coop%u%31s", &b, &t, rest) == 2) {
        f.kind = K::RsaCoop, f.bits = b, f.lanes = t;
        return (b == 2048 || b == 3072 || b == 4096) && (t == 8 || t == 16);
    }
    if (std::sscanf(name.c_str(), "rsa%u_%31s", &b, rest) == 2) {
        std::string r = rest;
        if (!(b == 2048 || b == 3072 || b == 4096)) return false;
        f.bits = b;
        if (r == "sign") return f.kind = K::RsaSlot, true;
        if (r == "sign_wide") return f.kind = K::RsaWide, true;
        if (r == "check") return f.kind = K::RsaCheck, true;
        return false;
    }
    if (std::sscanf(name.c_str(), "p%u_%31s", &b, rest) == 2 && (b == 256 || b == 384)) {
        std::string r = rest;
        f.bits = b;
        if (r == "sign") return f.kind = K::EcSign, true;
        if (r == "check") return f.kind = K::EcCheck, true;
        if (r == "nonce") return f.kind = K::Nonce, true;
        return false;
    }
    if (name == "ed25519_sign") return f.kind = K::EdSign, true;
    if (name == "ed25519_check") return f.kind = K::EdCheck, true;
    return false;
}

struct CtxState {
    int current = 0;
};
thread_local void *current_ctx = nullptr;
char primary_ctx_tag;  // the one context's handle

// The arguments of a launch, read at launch time as the driver does.
template <class T>
T arg(void **params, int i) {
    T v;
    std::memcpy(&v, params[i], sizeof(T));
    return v;
}

}  // namespace

#define LOCKED                              \
    std::lock_guard<std::recursive_mutex> g(mu); \
    if (!initialised) return NOT_INITIALIZED;    \
    if (sticky != OK) return sticky

extern "C" {

CUresult cuInit(unsigned) {
    std::lock_guard<std::recursive_mutex> g(mu);
    initialised = true;
    return OK;
}

CUresult cuDriverGetVersion(int *v) {
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return OK;
}

CUresult cuDeviceGetCount(int *n) {
    LOCKED;
    *n = 1;
    return OK;
}

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    LOCKED;
    if (ordinal != 0) return INVALID_DEVICE;
    *d = 0;
    return OK;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    LOCKED;
    if (d != 0 || len <= 0) return INVALID_VALUE;
    std::snprintf(name, len, "%s", "sigmux fake CUDA driver (host emulation)");
    return OK;
}

CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
    LOCKED;
    if (d != 0) return INVALID_DEVICE;
    switch (attr) {
        case 1: *v = 1024; break;   // max threads per block
        case 10: *v = 32; break;    // warp size
        case 16: *v = kSms; break;  // SMs
        case 75: *v = 9; break;     // compute capability 9.0 (Hopper)
        case 76: *v = 0; break;
        case 115: *v = 1; break;  // memory pools (cuMemAllocAsync)
        default: *v = 0; break;
    }
    return OK;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    LOCKED;
    if (d != 0) return INVALID_DEVICE;
    *bytes = (size_t)80 << 30;
    return OK;
}

CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total) {
    LOCKED;
    *total = (size_t)80 << 30;
    *free_b = *total - ((size_t)1 << 30);
    return OK;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
    LOCKED;
    if (d != 0) return INVALID_DEVICE;
    *ctx = &primary_ctx_tag;
    return OK;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
    LOCKED;
    return OK;
}

CUresult cuCtxSetCurrent(void *ctx) {
    LOCKED;
    if (ctx && ctx != &primary_ctx_tag) return INVALID_CONTEXT;
    current_ctx = ctx;
    return OK;
}

CUresult cuCtxGetCurrent(void **ctx) {
    LOCKED;
    *ctx = current_ctx;
    return OK;
}

CUresult cuCtxSynchronize(void) {
    LOCKED;
    run_all();
    return sticky;
}

CUresult cuStreamCreate(void **s, unsigned) {
    LOCKED;
    streams.push_back(std::make_unique<Stream>());
    *s = streams.back().get();
    return OK;
}

CUresult cuStreamCreateWithPriority(void **s, unsigned flags, int) { return cuStreamCreate(s, flags); }

CUresult cuStreamSynchronize(void *h) {
    LOCKED;
    run(stream_of(h));
    return sticky;
}

CUresult cuStreamDestroy_v2(void *h) {
    LOCKED;
    Stream *s = stream_of(h);
    run(s);  // destroying a stream lets its work finish
    for (auto it = streams.begin(); it != streams.end(); ++it)
        if (it->get() == s) {
            streams.erase(it);
            return OK;
        }
    return INVALID_HANDLE;
}

CUresult cuEventCreate(void **e, unsigned) {
    LOCKED;
    *e = new Event();
    return OK;
}

CUresult cuEventDestroy_v2(void *) {
    // Kept: work already queued may still mark it done (CUDA lets an event
    // be destroyed before it completes). A test process makes few.
    return OK;
}

CUresult cuEventRecord(void *h, void *s) {
    LOCKED;
    Event *e = (Event *)h;
    e->stream = stream_of(s);
    unsigned long long seq = ++e->seq;
    e->stream->work.push_back([e, seq] { e->done = seq; });
    return OK;
}

// Runs the event's stream up to its last record.
static void finish_event(Event *e) {
    if (e->stream) run(e->stream, [e] { return e->done >= e->seq; });
}

CUresult cuEventSynchronize(void *h) {
    LOCKED;
    finish_event((Event *)h);
    return sticky;
}

CUresult cuEventQuery(void *h) {
    LOCKED;
    finish_event((Event *)h);
    return sticky;
}

CUresult cuStreamWaitEvent(void *s, void *h, unsigned) {
    LOCKED;
    Event *e = (Event *)h;
    unsigned long long seq = e->seq;
    stream_of(s)->work.push_back([e, seq] {
        if (e->stream) run(e->stream, [e, seq] { return e->done >= seq; });
    });
    return OK;
}

CUresult cuEventElapsedTime(float *ms, void *, void *) {
    *ms = 0.0f;
    return NOT_SUPPORTED;
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
    LOCKED;
    if (n == 0) return INVALID_VALUE;
    void *q = alloc_filled(n, Kind::Device);
    if (!q) return OUT_OF_MEMORY;
    *p = (CUdeviceptr)(uintptr_t)q;
    return OK;
}

CUresult cuMemAllocAsync(CUdeviceptr *p, size_t n, void *) { return cuMemAlloc_v2(p, n); }

CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCKED;
    run_all();  // cuMemFree waits for the device
    free_alloc((uintptr_t)p, Kind::Device, "cuMemFree");
    return sticky;
}

CUresult cuMemFreeAsync(CUdeviceptr p, void *s) {
    LOCKED;
    stream_of(s)->work.push_back([p] { free_alloc((uintptr_t)p, Kind::Device, "cuMemFreeAsync"); });
    return OK;
}

CUresult cuMemHostAlloc(void **p, size_t n, unsigned) {
    LOCKED;
    *p = alloc_filled(n ? n : 1, Kind::Pinned);
    return *p ? OK : OUT_OF_MEMORY;
}

CUresult cuMemFreeHost(void *p) {
    LOCKED;
    run_all();
    free_alloc((uintptr_t)p, Kind::Pinned, "cuMemFreeHost");
    return sticky;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *s) {
    LOCKED;
    if (!check_device("cuMemcpyHtoDAsync", dst, n)) return sticky;
    if (find((uintptr_t)src, n, false)) {
        // From pinned memory the copy happens when the stream gets to it.
        stream_of(s)->work.push_back([dst, src, n] { std::memcpy((void *)dst, src, n); });
    } else {
        // From pageable memory the driver stages the bytes at once.
        auto staged = std::make_shared<std::vector<char>>((const char *)src, (const char *)src + n);
        stream_of(s)->work.push_back([dst, staged] { std::memcpy((void *)dst, staged->data(), staged->size()); });
    }
    return OK;
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *s) {
    LOCKED;
    if (!check_device("cuMemcpyDtoHAsync", src, n)) return sticky;
    if (find((uintptr_t)dst, n, false)) {
        stream_of(s)->work.push_back([dst, src, n] { std::memcpy(dst, (const void *)src, n); });
        return OK;
    }
    // Into pageable memory the copy returns when the bytes are there.
    run(stream_of(s));
    std::memcpy(dst, (const void *)src, n);
    return sticky;
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *s) {
    LOCKED;
    if (!check_device("cuMemcpyDtoDAsync dst", dst, n) || !check_device("cuMemcpyDtoDAsync src", src, n))
        return sticky;
    // A key copied into constant memory: its source holds the key too.
    const Alloc *to = find(dst, n, true);
    if (to && to->kind == Kind::Global) {
        auto it = std::prev(allocs.upper_bound(src));
        it->second.secrets.emplace_back(src - it->first, n);
    }
    stream_of(s)->work.push_back([dst, src, n] { std::memmove((void *)dst, (const void *)src, n); });
    return OK;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    LOCKED;
    if (!check_device("cuMemcpyHtoD", dst, n)) return sticky;
    run_all();
    std::memcpy((void *)dst, src, n);
    return sticky;
}

CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    LOCKED;
    if (!check_device("cuMemcpyDtoH", src, n)) return sticky;
    run_all();
    std::memcpy(dst, (const void *)src, n);
    return sticky;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void *s) {
    LOCKED;
    if (!check_device("cuMemsetD8Async", dst, n)) return sticky;
    stream_of(s)->work.push_back([dst, v, n] { std::memset((void *)dst, v, n); });
    return OK;
}

CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCKED;
    if (!check_device("cuMemsetD8", dst, n)) return sticky;
    run_all();
    std::memset((void *)dst, v, n);
    return sticky;
}

CUresult cuModuleLoadData(void **m, const void *image) {
    LOCKED;
    const char *p = (const char *)image;
    std::string img;
    if (std::memcmp(p, "\x7f" "ELF", 4) == 0) {
        // A CUBIN: ELF64, section headers give its size.
        uint64_t shoff;
        uint16_t shentsize, shnum;
        std::memcpy(&shoff, p + 0x28, 8);
        std::memcpy(&shentsize, p + 0x3A, 2);
        std::memcpy(&shnum, p + 0x3C, 2);
        size_t size = shoff + (size_t)shentsize * shnum;
        if (p[4] != 2 || size > ((size_t)1 << 30)) return INVALID_IMAGE;
        img.assign(p, size);
    } else {
        img.assign(p);  // PTX text
        if (img.find(".version") == std::string::npos) return INVALID_IMAGE;
    }
    auto mod = std::make_unique<Module>();
    mod->image = std::move(img);
    if (mod->image.find(kKeySlotsSymbol) != std::string::npos) {
        // A __constant__ array without an initialiser starts as zeroes.
        mod->slots = alloc_filled(kKeySlots * kKeySlotWords * 4, Kind::Global);
        std::memset(mod->slots, 0, kKeySlots * kKeySlotWords * 4);
    }
    *m = mod.get();
    modules.push_back(std::move(mod));
    return OK;
}

CUresult cuModuleUnload(void *m) {
    LOCKED;
    run_all();
    for (auto it = modules.begin(); it != modules.end(); ++it)
        if (it->get() == m) {
            if ((*it)->slots) {
                if (!all_zero((*it)->slots, kKeySlots * kKeySlotWords * 4))
                    violation("cuModuleUnload: a key slot of smx_rsa_key_slots was not wiped");
                allocs.erase((uintptr_t)(*it)->slots);
                std::free((*it)->slots);
            }
            modules.erase(it);
            return OK;
        }
    return INVALID_HANDLE;
}

CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    LOCKED;
    Module *mod = (Module *)m;
    if (mod->image.find(name) == std::string::npos) return NOT_FOUND;
    auto fn = std::make_unique<Function>();
    fn->name = name;
    fn->module = mod;
    if (!classify(fn->name, *fn)) {
        std::fprintf(stderr, "fake-cuda: no host emulation for kernel %s\n", name);
        return NOT_FOUND;
    }
    *f = fn.get();
    functions.push_back(std::move(fn));
    return OK;
}

CUresult cuModuleGetGlobal_v2(CUdeviceptr *p, size_t *bytes, void *m, const char *name) {
    LOCKED;
    Module *mod = (Module *)m;
    if (std::strcmp(name, kKeySlotsSymbol) != 0 || !mod->slots) return NOT_FOUND;
    if (p) *p = (CUdeviceptr)(uintptr_t)mod->slots;
    if (bytes) *bytes = kKeySlots * kKeySlotWords * 4;
    return OK;
}

CUresult cuFuncGetAttribute(int *v, int attr, void *) {
    LOCKED;
    switch (attr) {
        case 0: *v = 1024; break;  // max threads per block
        case 3: *v = 0; break;     // local bytes per thread
        case 4: *v = 128; break;   // registers per thread
        default: *v = 0; break;
    }
    return OK;
}

CUresult cuFuncSetAttribute(void *, int, int) { return OK; }

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *n, void *, int block, size_t) {
    LOCKED;
    *n = block > 0 ? 2048 / block : 0;
    return OK;
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int *n, void *f, int block, size_t sm,
                                                              unsigned) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, sm);
}

CUresult cuLaunchKernel(void *fh, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, void *s, void **params, void **extra) {
    LOCKED;
    Function *f = (Function *)fh;
    const char *name = f->name.c_str();
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || gx == 0 || bx == 0 || bx > 1024) {
        violation("%s: launch shape grid (%u,%u,%u) block (%u,%u,%u): the kernels use x only", name,
                  gx, gy, gz, bx, by, bz);
        return sticky;
    }
    if (shared != 0 || extra || !params) {
        violation("%s: shared %u, extra %p, params %p", name, shared, (void *)extra, (void *)params);
        return sticky;
    }
    const unsigned long long threads = (unsigned long long)gx * bx;
    const bool lanes = f->kind == K::RsaCoop || f->kind == K::EcSign || f->kind == K::EcCheck ||
                       f->kind == K::EdSign || f->kind == K::EdCheck;
    if (lanes && bx % 32 != 0) {
        violation("%s: block of %u threads: this kernel needs whole warps", name, bx);
        return sticky;
    }
    const u32 bits = f->bits;
    std::function<void()> work;
    // Checks [p, p + words * 4) and returns it as a pointer.
    bool bad = false;
    auto dev = [&](int i, const char *what, size_t bytes) -> uintptr_t {
        uintptr_t p = (uintptr_t)arg<CUdeviceptr>(params, i);
        if (!bad && !find(p, bytes, true)) {
            violation("%s: argument %d (%s): 0x%llx + %zu bytes is not inside one live device "
                      "allocation",
                      name, i, what, (unsigned long long)p, bytes);
            bad = true;
        }
        return p;
    };
    // Marks [p, p + n) as holding secrets.
    auto secret = [&](uintptr_t p, size_t n) {
        auto it = allocs.upper_bound(p);
        if (it != allocs.begin()) std::prev(it)->second.secrets.emplace_back(p - std::prev(it)->first, n);
    };
    switch (f->kind) {
        case K::RsaSlot:
        case K::RsaWide: {
            const u32 slot = arg<u32>(params, 0), count = arg<u32>(params, 3);
            const size_t item = bits / 8;
            auto in = dev(1, "in", count * item), out = dev(2, "out", count * item);
            if (slot >= kKeySlots) {
                violation("%s: key slot %u of %zu", name, slot, kKeySlots);
                return sticky;
            }
            const u32 *key = (const u32 *)f->module->slots + slot * kKeySlotWords;
            const bool wide = f->kind == K::RsaWide;
            work = [=] {
                int rc = wide ? smx_rsa_sign_wide_emu_host(bits, key, (const u32 *)in, (u32 *)out, count)
                              : smx_rsa_sign_emu_host(bits, key, (const u32 *)in, (u32 *)out, count);
                if (rc) violation("%s: host build refused size %u", name, bits);
            };
            break;
        }
        case K::RsaCoop: {
            const u32 count = arg<u32>(params, 3), lanes_n = f->lanes;
            const size_t item = bits / 8, key_bytes = (8 + 11 * (bits / 64)) * 4;
            auto key = dev(0, "key", key_bytes), in = dev(1, "in", count * item),
                 out = dev(2, "out", count * item);
            secret(key, key_bytes);
            work = [=] {
                if (smx_rsa_sign_coop_host(bits, lanes_n, (const u32 *)key, (const u32 *)in, (u32 *)out,
                                           count))
                    violation("%s: host build refused", name);
            };
            break;
        }
        case K::RsaCheck: {
            const u32 count = arg<u32>(params, 4);
            const size_t item = bits / 8, key_bytes = (8 + 11 * (bits / 64)) * 4;
            auto key = dev(0, "key", key_bytes), sig = dev(1, "sig", count * item),
                 exp = dev(2, "expected", count * item), ok = dev(3, "ok", count * 4);
            secret(key, key_bytes);
            work = [=] {
                if (smx_rsa_check_host(bits, (const u32 *)key, (const u32 *)sig, (const u32 *)exp,
                                       (u32 *)ok, count))
                    violation("%s: host build refused", name);
            };
            break;
        }
        case K::EcSign:
        case K::EcCheck: {
            const size_t l = bits / 32, table = 128 * 2 * l * 4, key_bytes = (3 * l) * 4 + table;
            const bool sign = f->kind == K::EcSign;
            const u32 count = arg<u32>(params, sign ? 7 : 6);
            auto t = dev(0, "table", table), key = dev(1, "key", key_bytes),
                 z = dev(2, "z", count * l * 4);
            secret(key, l * 4);  // d; the rest of the blob is public
            if (sign) {
                auto k = dev(3, "k", count * l * 4), r = dev(4, "r", count * l * 4),
                     sv = dev(5, "s", count * l * 4), ok = dev(6, "ok", count * 4);
                secret(k, count * l * 4);
                work = [=] {
                    (bits == 256 ? smx_p256_sign_host : smx_p384_sign_host)(
                        (const u32 *)t, (const u32 *)key, (const u32 *)z, (const u32 *)k, (u32 *)r,
                        (u32 *)sv, (u32 *)ok, count);
                };
            } else {
                auto r = dev(3, "r", count * l * 4), sv = dev(4, "s", count * l * 4),
                     ok = dev(5, "ok", count * 4);
                work = [=] {
                    (bits == 256 ? smx_p256_check_host : smx_p384_check_host)(
                        (const u32 *)t, (const u32 *)key, (const u32 *)z, (const u32 *)r,
                        (const u32 *)sv, (u32 *)ok, count);
                };
            }
            break;
        }
        case K::Nonce: {
            const size_t l = bits / 32;
            const u32 count = arg<u32>(params, 5);
            if (threads < count) {
                violation("%s: %llu threads for %u items: this kernel takes one item per thread and "
                          "does not stride",
                          name, threads, count);
                return sticky;
            }
            auto key = dev(0, "key", l * 4), z = dev(1, "z", count * l * 4), seed = dev(2, "seed", 32),
                 k = dev(3, "k", count * l * 4), ok = dev(4, "ok", count * 4);
            secret(key, l * 4);
            secret(k, count * l * 4);
            work = [=] {
                (bits == 256 ? smx_p256_nonce_host : smx_p384_nonce_host)(
                    (const u32 *)key, (const u32 *)z, (const unsigned char *)seed, (u32 *)k, (u32 *)ok,
                    count);
            };
            break;
        }
        case K::EdSign:
        case K::EdCheck: {
            const bool sign = f->kind == K::EdSign;
            const u32 count = arg<u32>(params, 6);
            const size_t table = 3072 * 4, key_bytes = (24 + 3072) * 4;
            auto t = dev(0, "table", table), key = dev(1, "key", key_bytes),
                 off = dev(3, "off", (count + 1) * 4ull), sig = dev(4, "sig", count * 64ull),
                 ok = dev(5, "ok", count * 4);
            secret(key, 16 * 4);  // a and prefix; A and the table are public
            // The messages' length is in `off`, which the stream may not
            // have written yet: checked when the launch runs.
            uintptr_t msg = (uintptr_t)arg<CUdeviceptr>(params, 2);
            work = [=] {
                const u32 end = ((const u32 *)off)[count];
                if (!find(msg, end ? end : 1, true)) {
                    violation("%s: argument 2 (msg): %u bytes at 0x%llx are not inside one live device "
                              "allocation",
                              name, end, (unsigned long long)msg);
                    return;
                }
                if (sign)
                    smx_ed25519_sign_host((const u32 *)t, (const u32 *)key, (const unsigned char *)msg,
                                          (const u32 *)off, (u32 *)sig, (u32 *)ok, count);
                else
                    smx_ed25519_check_host((const u32 *)t, (const u32 *)key, (const unsigned char *)msg,
                                           (const u32 *)off, (const u32 *)sig, (u32 *)ok, count);
            };
            break;
        }
    }
    if (bad) return sticky;
    // A fault raised while the launch runs (later, at a synchronisation)
    // stops the work after it, as a device fault would.
    stream_of(s)->work.push_back([work, name = f->name] {
        if (sticky != OK) return;
        if (fault_armed) {
            fault_armed = false;
            std::fprintf(stderr, "fake-cuda: injected device fault in %s\n", name.c_str());
            sticky = ILLEGAL_ADDRESS;
            return;
        }
        work();
    });
    return OK;
}

// Not part of CUDA: the next launch to run faults the context the way an
// Xid error in a kernel does (CUDA_ERROR_ILLEGAL_ADDRESS from then on), so
// tests can watch the backend and the engine live through a dead device.
void sigmux_fake_cuda_fault_next_launch(void) {
    std::lock_guard<std::recursive_mutex> g(mu);
    fault_armed = true;
}

CUresult cuGetErrorName(CUresult e, const char **s) {
    switch (e) {
        case OK: *s = "CUDA_SUCCESS"; break;
        case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
        case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
        case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
        case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
        case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case ILLEGAL_ADDRESS: *s = "CUDA_ERROR_ILLEGAL_ADDRESS"; break;
        case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; return INVALID_VALUE;
    }
    return OK;
}

CUresult cuGetErrorString(CUresult e, const char **s) {
    const char *name;
    CUresult rc = cuGetErrorName(e, &name);
    *s = e == ILLEGAL_ADDRESS ? "an illegal memory access was encountered (fake-cuda: see its VIOLATION line)"
                              : name;
    return rc;
}

}  // extern "C"
