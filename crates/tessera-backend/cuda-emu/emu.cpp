// A CPU stand-in for the parts of the CUDA driver, NVRTC and cuBLAS that the
// Tessera CUDA backend calls, so the backend's own code (kernel launches,
// argument packing, streams, events, graph capture and replay, pinned
// staging, cuBLAS calls) and the kernels themselves run in CI without a GPU.
// Built by scripts/cuda-emu.sh as one library that answers to the names
// libcuda.so.1, libnvrtc.so.13 and libcublas.so.13. See docs/cuda-emu.md for
// what it checks and what it cannot.
//
// Work runs synchronously when it is queued, in queue order (so a missing
// stream or event dependency is not detected); all calls are serialised by
// one lock. What it does check, as a GPU would or more strictly:
// - device memory: every allocation is followed by an unmapped guard page and
//   unmapped when freed, so reads or writes past the end (to the next 256
//   bytes) or after a free stop the process with the kernel's name; new
//   memory is filled with 0xFF bytes (NaN as f32), so reading memory nobody
//   wrote shows up in results; copies must lie inside one live allocation.
// - launches: block size, dynamic shared memory against the kernel's limit
//   (48 KiB unless raised with cuFuncSetAttribute), a module built from the
//   exact kernel source the backend compiled (hash check in NVRTC).
// - kernels: __syncthreads and shuffles that never complete (deadlock) and
//   shuffles that read a lane outside the mask are reported as launch errors.
// - stream capture: synchronising or allocating synchronously on the
//   capturing thread, waiting for an event recorded outside the capture,
//   freeing memory the capture did not allocate, and replaying a graph whose
//   own allocations outlive it all fail, and invalidate the capture.

#include <execinfo.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "emu_kernel.h"
#include "emu_register.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

#ifndef EMU_SOURCE_HASH
#error "EMU_SOURCE_HASH (FNV-1a of the kernel source) must be defined by the build"
#endif

typedef int CUresult;
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION = 905,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};

namespace {

std::recursive_mutex g_mu;
#define LOCK std::lock_guard<std::recursive_mutex> lock_(g_mu)

void note(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "tessera-cuda-emu: ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------- device memory

struct Block {
    char* base;   // mapping start
    size_t len;   // mapping length (data + guard page)
    size_t size;  // requested bytes
};
std::map<uintptr_t, Block> g_mem;  // by data address
size_t g_mem_used = 0;
size_t g_page = 4096;

size_t total_mem() {
    static size_t t = [] {
        const char* e = std::getenv("TESSERA_CUDA_EMU_MEM_GIB");
        size_t gib = e ? std::strtoull(e, nullptr, 10) : 16;
        return (gib ? gib : 16) << 30;
    }();
    return t;
}

CUresult dev_alloc(uintptr_t* out, size_t size) {
    if (g_mem_used + size > total_mem()) return CUDA_ERROR_OUT_OF_MEMORY;
    size_t data = (size + 255) & ~(size_t)255;
    if (data == 0) data = 256;
    size_t pages = (data + g_page - 1) / g_page * g_page;
    size_t len = pages + g_page;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    char* base = (char*)m;
    mprotect(base + pages, g_page, PROT_NONE);
    char* p = base + pages - data;
    std::memset(p, 0xFF, data);
    g_mem[(uintptr_t)p] = Block{base, len, size};
    g_mem_used += size;
    *out = (uintptr_t)p;
    return CUDA_SUCCESS;
}

CUresult dev_free(uintptr_t p) {
    auto it = g_mem.find(p);
    if (it == g_mem.end()) {
        note("free of %#lx, which is not the start of a live device allocation", (unsigned long)p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    munmap(it->second.base, it->second.len);
    g_mem_used -= it->second.size;
    g_mem.erase(it);
    return CUDA_SUCCESS;
}

// Whether [p, p + n) lies inside one live device allocation.
bool dev_range(uintptr_t p, size_t n) {
    auto it = g_mem.upper_bound(p);
    if (it == g_mem.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second.size;
}


// ---------------------------------------------------------------- kernels

std::map<std::string, emu::KernelInfo>& registry() {
    static std::map<std::string, emu::KernelInfo> r;
    return r;
}

struct Function {
    const emu::KernelInfo* k;
    int max_dyn_smem = 48 * 1024;
};

struct Module {
    std::vector<std::unique_ptr<Function>> fns;
};

enum FiberState { RUN, AT_BLOCK, AT_WARP, DONE };

// Switching between a block's threads. On x86-64 a minimal switch (the
// callee-saved registers and the stack pointer; glibc's swapcontext also
// saves the signal mask with a system call per switch, which made it most of
// the emulator's time); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch,.-emu_switch
)");
struct Context {
    void* sp = nullptr;
};
void fiber_entry();
void ctx_init(Context& c, char* stack, size_t size) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** p = (void**)top;
    *--p = nullptr;                      // fake return address: entry sees rsp = 8 mod 16
    *--p = (void*)&fiber_entry;          // popped by `ret`
    for (int i = 0; i < 6; i++) *--p = nullptr;  // rbp rbx r12 r13 r14 r15
    c.sp = p;
}
void ctx_switch(Context& from, Context& to) { emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};
void fiber_entry();
Context* g_sched_ptr = nullptr;
void ctx_init(Context& c, char* stack, size_t size);
void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
    Context uc;
    FiberState state;
    unsigned mask;
    uint64_t offer[2];
    unsigned gen;
    unsigned present;  // lanes that took part in the last released shuffle
};

std::vector<Fiber> g_fibers;
Context g_sched;
int g_cur = -1;
char* g_stacks = nullptr;
size_t g_stack_size = 256 << 10;
size_t g_stack_count = 0;
const emu::KernelInfo* g_kernel = nullptr;
void** g_params = nullptr;
std::vector<char> g_dyn;  // dynamic shared memory
std::string g_fault;
struct sigaction g_old_segv, g_old_bus;
bool g_in_kernel = false;

void fiber_entry() {
    g_kernel->invoke(g_kernel->fn, g_params);
    Fiber& f = g_fibers[g_cur];
    f.state = DONE;
    ctx_switch(f.uc, g_sched);  // never resumed
    std::abort();
}

#if !defined(__x86_64__)
void ctx_init(Context& c, char* stack, size_t size) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, fiber_entry, 0);
}
#endif

void yield_to_scheduler(FiberState s) {
    Fiber& f = g_fibers[g_cur];
    f.state = s;
    ctx_switch(f.uc, g_sched);
}

void on_segv(int sig, siginfo_t* info, void*) {
    char buf[512];
    int n = std::snprintf(buf, sizeof buf,
                          "tessera-cuda-emu: kernel `%s` (block %u,%u thread %u) touched unmapped memory at %p "
                          "(past the end of a device allocation, or freed memory): signal %d\n",
                          g_kernel ? g_kernel->name : "?", emu::block_idx.x, emu::block_idx.y, emu::thread_idx.x,
                          info->si_addr, sig);
    ssize_t w = write(2, buf, n > 0 ? (size_t)n : 0);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

// Run `k` over the grid; returns an error text or "" on success.
std::string run_kernel(const emu::KernelInfo* k, dim3 grid, dim3 block, unsigned smem, void** params) {
    size_t nthreads = (size_t)block.x * block.y * block.z;
    if (block.y != 1 || block.z != 1) return "the emulator runs one-dimensional blocks only";
    if (nthreads > g_stack_count) {
        if (g_stacks) munmap(g_stacks, g_stack_count * g_stack_size);
        g_stack_count = 1024;
        void* m = mmap(nullptr, g_stack_count * g_stack_size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return "cannot map fiber stacks";
        g_stacks = (char*)m;
    }
    g_kernel = k;
    g_params = params;
    g_dyn.assign(smem + 16, (char)0xFF);
    g_fibers.assign(nthreads, Fiber{});
    emu::block_dim = dim3{block.x, 1, 1};
    emu::grid_dim = grid;
    g_fault.clear();

    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    g_in_kernel = true;

    std::string err;
    for (unsigned bz = 0; bz < grid.z && err.empty(); bz++)
        for (unsigned by = 0; by < grid.y && err.empty(); by++)
            for (unsigned bx = 0; bx < grid.x && err.empty(); bx++) {
                emu::block_idx = uint3{bx, by, bz};
                for (size_t t = 0; t < nthreads; t++) {
                    Fiber& f = g_fibers[t];
                    f.state = RUN;
                    f.gen = 0;
                    ctx_init(f.uc, g_stacks + t * g_stack_size, g_stack_size);
                }
                for (;;) {
                    for (size_t t = 0; t < nthreads && g_fault.empty(); t++) {
                        if (g_fibers[t].state != RUN) continue;
                        g_cur = (int)t;
                        emu::thread_idx = uint3{(unsigned)t, 0, 0};
                        ctx_switch(g_sched, g_fibers[t].uc);
                    }
                    if (!g_fault.empty()) {
                        err = g_fault;
                        break;
                    }
                    bool all_done = true, released = false;
                    for (auto& f : g_fibers) all_done &= f.state == DONE;
                    if (all_done) break;
                    // Warp barriers: every live lane named in a waiting lane's mask has arrived.
                    for (size_t w0 = 0; w0 < nthreads; w0 += 32) {
                        size_t lanes = std::min<size_t>(32, nthreads - w0);
                        for (size_t l = 0; l < lanes; l++) {
                            Fiber& f = g_fibers[w0 + l];
                            if (f.state != AT_WARP) continue;
                            bool ready = true;
                            for (size_t o = 0; o < lanes; o++) {
                                if (!((f.mask >> o) & 1)) continue;
                                FiberState s = g_fibers[w0 + o].state;
                                if (s != AT_WARP && s != DONE) ready = false;
                            }
                            if (!ready) continue;
                            unsigned present = 0;
                            for (size_t o = 0; o < lanes; o++)
                                if (((f.mask >> o) & 1) && g_fibers[w0 + o].state == AT_WARP) present |= 1u << o;
                            for (size_t o = 0; o < lanes; o++)
                                if ((present >> o) & 1) {
                                    g_fibers[w0 + o].state = RUN;
                                    g_fibers[w0 + o].present = present;
                                }
                            released = true;
                        }
                    }
                    if (!released) {
                        bool all_block = true;
                        for (auto& f : g_fibers) all_block &= f.state == AT_BLOCK || f.state == DONE;
                        if (all_block) {
                            for (auto& f : g_fibers)
                                if (f.state == AT_BLOCK) f.state = RUN;
                            released = true;
                        }
                    }
                    if (!released) {
                        size_t at_block = 0, at_warp = 0, done = 0;
                        for (auto& f : g_fibers) {
                            at_block += f.state == AT_BLOCK;
                            at_warp += f.state == AT_WARP;
                            done += f.state == DONE;
                        }
                        char buf[256];
                        std::snprintf(buf, sizeof buf,
                                      "deadlock in block (%u,%u): %zu threads at __syncthreads, %zu in a warp shuffle, "
                                      "%zu exited",
                                      bx, by, at_block, at_warp, done);
                        err = buf;
                        break;
                    }
                }
            }
    g_in_kernel = false;
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    sigaction(SIGBUS, &g_old_bus, nullptr);
    g_kernel = nullptr;
    return err;
}

// ---------------------------------------------------------------- streams, events, graphs

struct Graph;

struct Stream;

struct Event {
    double t = 0;
    bool recorded = false;
    Graph* captured_in = nullptr;  // recorded while this graph was being captured
    Stream* stream = nullptr;      // where it was last recorded
    uint64_t gen = 0;              // records so far
    uint64_t done_gen = 0;         // records that have completed
    uint64_t queried_gen = 0;      // last record a query found pending
};

// Handles given out for events: work queued on deferred streams keeps the
// event alive after cuEventDestroy.
struct EventBox {
    std::shared_ptr<Event> e;
};

struct Graph {
    std::vector<std::function<std::string()>> ops;
    std::set<uintptr_t> allocs;  // allocated by the captured work
    std::set<uintptr_t> freed;   // of those, freed by it
};

struct GraphExec {
    std::shared_ptr<Graph> g;
};

std::set<uintptr_t> g_graph_owned;  // addresses owned by graphs (kept until the graph is destroyed)

// A graph's allocations that it frees itself go with it; any it leaves live
// become ordinary allocations (their owner frees them).
void release_graph_allocs(Graph* g) {
    for (uintptr_t p : g->allocs) {
        g_graph_owned.erase(p);
        if (g->freed.count(p)) dev_free(p);
    }
    g->allocs.clear();
}

struct Stream {
    Graph* capture = nullptr;  // non-null while capturing
    bool invalidated = false;
    int mode = 0;
    std::thread::id thread;
    // Deferred (TESSERA_CUDA_EMU_ORDER): work waits here until something
    // needs it (a synchronisation, or another stream waiting on an event).
    bool deferred = false;
    bool draining = false;
    std::deque<std::function<std::string()>> queue;
};

// Which streams defer their work (TESSERA_CUDA_EMU_ORDER):
//   immediate (default): work runs when queued, in host order;
//   defer-first: the first stream a process creates (the backend's compute
//     stream) runs only when forced, other streams at once, so a copy that
//     does not wait for the compute it must follow overwrites data too early;
//   defer-others: every later stream (the offload copy stream) runs only when
//     forced, so compute that does not wait for a copy reads stale data.
int order_mode() {
    static int m = [] {
        const char* e = std::getenv("TESSERA_CUDA_EMU_ORDER");
        if (!e || !*e || std::strcmp(e, "immediate") == 0) return 0;
        if (std::strcmp(e, "defer-first") == 0) return 1;
        if (std::strcmp(e, "defer-others") == 0) return 2;
        std::fprintf(stderr, "tessera-cuda-emu: TESSERA_CUDA_EMU_ORDER=%s: expected immediate, defer-first or "
                             "defer-others\n", e);
        std::abort();
    }();
    return m;
}
int g_streams_created = 0;

Stream g_legacy;
std::set<Stream*> g_streams;
std::map<Graph*, std::shared_ptr<Graph>> g_graphs;

Stream* stream_of(void* s) {
    if (s == nullptr || s == (void*)1 || s == (void*)2) return &g_legacy;
    return (Stream*)s;
}

// Whether the calling thread may not make "unsafe" calls because of an
// active capture (global mode: any capture; thread-local: its own).
Stream* capture_blocking_this_thread() {
    for (Stream* s : g_streams) {
        if (!s->capture) continue;
        if (s->mode == 0 || (s->mode == 1 && s->thread == std::this_thread::get_id())) return s;
    }
    return nullptr;
}

// With TESSERA_CUDA_EMU_BACKTRACE=1, the native stack of the caller (for
// finding which op broke a capture).
void maybe_backtrace() {
    static bool on = [] {
        const char* e = std::getenv("TESSERA_CUDA_EMU_BACKTRACE");
        return e && std::strcmp(e, "1") == 0;
    }();
    if (!on) return;
    void* frames[64];
    int n = backtrace(frames, 64);
    backtrace_symbols_fd(frames, n, 2);
}

CUresult invalidate(Stream* s, CUresult code, const char* why) {
    if (!s->invalidated) {
        note("stream capture invalidated: %s", why);
        maybe_backtrace();
    }
    s->invalidated = true;
    return code;
}

// An unsafe (implicitly synchronising) call on this thread.
CUresult unsafe_call(const char* what) {
    if (Stream* s = capture_blocking_this_thread()) {
        char buf[256];
        std::snprintf(buf, sizeof buf, "%s while a stream is being captured", what);
        return invalidate(s, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, buf);
    }
    return CUDA_SUCCESS;
}

// What an op returns while it cannot finish yet (an NCCL collective whose
// peers have not all arrived): the stream stops there until it can.
const std::string kPending = "\x01pending";

CUresult op_failed(const std::string& e) {
    note("%s", e.c_str());
    return CUDA_ERROR_LAUNCH_FAILED;
}

// Run `s`'s deferred work in order, until event `e` reaches record `gen`
// (all of it without `e`). Returns the first failure.
std::string drain(Stream* s, const Event* e = nullptr, uint64_t gen = 0) {
    if (s->draining) return "streams wait on each other's later work (a GPU would deadlock)";
    s->draining = true;
    std::string err;
    while (!s->queue.empty() && !(e && e->done_gen >= gen)) {
        auto op = std::move(s->queue.front());
        s->queue.pop_front();
        err = op();
        if (err == kPending) {
            s->queue.push_front(std::move(op));
            break;
        }
        if (!err.empty()) break;
    }
    s->draining = false;
    return err;
}

std::string drain_all() {
    std::string pending;
    for (Stream* s : g_streams) {
        std::string e = drain(s);
        if (e == kPending) pending = e;
        else if (!e.empty()) return e;
    }
    return pending;
}

// Retry `attempt` while it is pending, letting other threads (and the peers'
// processes) make progress; a GPU would block here for good, the emulator
// gives up after 300 s.
std::string wait_unblocked(const std::function<std::string()>& attempt) {
    auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        std::string r = attempt();
        if (r != kPending) return r;
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(300))
            return "blocked for 300 s behind a collective whose peers never arrived (a GPU would hang)";
        g_mu.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        g_mu.lock();
    }
}

// Queue `op` on `s`: run now, keep it (deferred stream), or record it when
// `s` is capturing.
CUresult enqueue(Stream* s, std::function<std::string()> op) {
    if (s->capture) {
        // As the driver: once invalidated, a capture refuses all further work.
        if (s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        s->capture->ops.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    if (&*s == &g_legacy) {
        if (Stream* c = capture_blocking_this_thread())
            return invalidate(c, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "work on the legacy stream during capture");
    }
    if (s->deferred || !s->queue.empty()) {
        s->queue.push_back(std::move(op));
        if (s->deferred) return CUDA_SUCCESS;
        std::string e = drain(s);  // behind a pending collective: progress if it can
        return e.empty() || e == kPending ? CUDA_SUCCESS : op_failed(e);
    }
    std::string e = op();
    if (e == kPending) {
        s->queue.push_back(std::move(op));
        return CUDA_SUCCESS;
    }
    return e.empty() ? CUDA_SUCCESS : op_failed(e);
}

CUresult sync_stream(Stream* s, const char* what) {
    if (s->capture) return invalidate(s, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, what);
    if (CUresult r = unsafe_call(what)) return r;
    std::string e = wait_unblocked([s] { return drain(s); });
    return e.empty() ? CUDA_SUCCESS : op_failed(e);
}

std::map<uintptr_t, size_t> g_pinned_ranges;  // page-locked host memory: start -> bytes

bool pinned(uintptr_t p, size_t n) {
    auto it = g_pinned_ranges.upper_bound(p);
    if (it == g_pinned_ranges.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

struct Ctx {
    int dev = 0;
};
Ctx g_ctx;
Ctx g_ctxs[8] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};
thread_local Ctx* t_current = nullptr;
bool g_init = false;

std::string copy_check(uintptr_t dst, bool dst_dev, uintptr_t src, bool src_dev, size_t n, const char* what) {
    char buf[256];
    if (n == 0) return "";
    if (dst_dev && !dev_range(dst, n)) {
        std::snprintf(buf, sizeof buf, "%s: destination %#lx..+%zu is not inside one live device allocation", what,
                      (unsigned long)dst, n);
        return buf;
    }
    if (src_dev && !dev_range(src, n)) {
        std::snprintf(buf, sizeof buf, "%s: source %#lx..+%zu is not inside one live device allocation", what,
                      (unsigned long)src, n);
        return buf;
    }
    return "";
}

CUresult copy_async(uintptr_t dst, bool dst_dev, uintptr_t src, bool src_dev, size_t n, void* stream,
                    const char* what) {
    std::string e = copy_check(dst, dst_dev, src, src_dev, n, what);
    if (!e.empty()) {
        note("%s", e.c_str());
        return CUDA_ERROR_INVALID_VALUE;
    }
    Stream* s = stream_of(stream);
    if (!src_dev && !pinned(src, n)) {
        // From pageable memory the driver stages the source before returning.
        auto staged = std::make_shared<std::vector<char>>((const char*)src, (const char*)src + n);
        return enqueue(s, [=]() -> std::string {
            std::string e2 = copy_check(dst, dst_dev, 0, false, n, what);
            if (!e2.empty()) return e2;
            if (n) std::memcpy((void*)dst, staged->data(), n);
            return "";
        });
    }
    auto op = [=]() -> std::string {
        std::string e2 = copy_check(dst, dst_dev, src, src_dev, n, what);
        if (!e2.empty()) return e2;
        if (n) std::memmove((void*)dst, (const void*)src, n);
        return "";
    };
    if (!dst_dev && !pinned(dst, n) && !s->capture) {
        // To pageable memory the call returns only once the copy is done.
        std::string e2 = wait_unblocked([s] { return drain(s); });
        if (e2.empty()) e2 = op();
        return e2.empty() ? CUDA_SUCCESS : op_failed(e2);
    }
    return enqueue(s, op);
}

struct LaunchArgs {
    Function* f;
    dim3 grid, block;
    unsigned smem;
    void* stream;
    void** params;
};

CUresult launch(const LaunchArgs& a) {
    if (!a.f) return CUDA_ERROR_INVALID_HANDLE;
    const emu::KernelInfo* k = a.f->k;
    size_t threads = (size_t)a.block.x * a.block.y * a.block.z;
    if (threads == 0 || threads > 1024 || a.grid.x == 0 || a.grid.y == 0 || a.grid.z == 0 || a.grid.y > 65535 ||
        a.grid.z > 65535) {
        note("launch of `%s` with grid (%u,%u,%u) block (%u,%u,%u) is invalid", k->name, a.grid.x, a.grid.y,
             a.grid.z, a.block.x, a.block.y, a.block.z);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if ((int)a.smem > a.f->max_dyn_smem) {
        note("launch of `%s` asks for %u bytes of dynamic shared memory; its limit is %d (raise it with "
             "cuFuncSetAttribute)",
             k->name, a.smem, a.f->max_dyn_smem);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (k->nparams && !a.params) return CUDA_ERROR_INVALID_VALUE;
    // Copy the argument values now, as the driver does.
    std::vector<size_t> off(k->nparams);
    size_t total = 0;
    for (size_t i = 0; i < k->nparams; i++) {
        total = (total + 7) & ~(size_t)7;
        off[i] = total;
        total += k->sizes[i];
    }
    auto bytes = std::make_shared<std::vector<char>>(total + 8);
    for (size_t i = 0; i < k->nparams; i++) std::memcpy(bytes->data() + off[i], a.params[i], k->sizes[i]);
    dim3 grid = a.grid, block = a.block;
    unsigned smem = a.smem;
    return enqueue(stream_of(a.stream), [=]() -> std::string {
        std::vector<void*> ptrs(k->nparams);
        for (size_t i = 0; i < k->nparams; i++) ptrs[i] = bytes->data() + off[i];
        std::string e = run_kernel(k, grid, block, smem, ptrs.data());
        if (!e.empty()) return std::string("kernel `") + k->name + "`: " + e;
        return "";
    });
}

}  // namespace

// ---------------------------------------------------------------- kernel-side runtime

namespace emu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

void register_kernel(const KernelInfo& k) { registry()[k.name] = k; }

void* dyn_smem() {
    uintptr_t p = ((uintptr_t)g_dyn.data() + 15) & ~(uintptr_t)15;
    return (void*)p;
}

void block_barrier() { yield_to_scheduler(AT_BLOCK); }

uint64_t warp_shuffle(unsigned mask, uint64_t v, int src) {
    Fiber& f = g_fibers[g_cur];
    int lane = g_cur & 31;
    if (!((mask >> lane) & 1)) kernel_fault("a lane calls a shuffle with a mask that excludes it");
    unsigned buf = f.gen & 1;
    f.offer[buf] = v;
    f.mask = mask;
    yield_to_scheduler(AT_WARP);
    size_t s = (size_t)(g_cur & ~31) + (size_t)src;
    if (!((mask >> src) & 1) || s >= g_fibers.size() || !((f.present >> src) & 1))
        kernel_fault("a shuffle reads a lane that is outside its mask or has exited");
    Fiber& from = g_fibers[s];
    if (from.gen != f.gen && from.gen != f.gen + 1) kernel_fault("lanes of a warp are in different shuffles");
    uint64_t r = from.offer[buf];
    f.gen++;
    return r;
}

void kernel_fault(const char* what) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s (block %u,%u thread %u)", what, block_idx.x, block_idx.y, thread_idx.x);
    g_fault = buf;
    Fiber& f = g_fibers[g_cur];
    f.state = DONE;
    ctx_switch(f.uc, g_sched);  // never resumed
    std::abort();
}
}  // namespace emu

// ================================================================= driver API

typedef uintptr_t CUdeviceptr;

EXPORT CUresult cuInit(unsigned) {
    LOCK;
    g_init = true;
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
// TESSERA_CUDA_EMU_DEVICES: how many GPUs to report (1 to 8, default 1).
int device_count() {
    const char* e = std::getenv("TESSERA_CUDA_EMU_DEVICES");
    int n = e ? std::atoi(e) : 1;
    return n < 1 ? 1 : n > 8 ? 8 : n;
}
EXPORT CUresult cuDeviceGetCount(int* n) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    *n = device_count();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGet(int* d, int ordinal) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "Tessera CUDA emulator (CPU)");
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = total_mem();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid(unsigned char* uuid, int) {
    std::memset(uuid, 0x7e, 16);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetUuid_v2(unsigned char* uuid, int d) { return cuDeviceGetUuid(uuid, d); }
EXPORT CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 1: *v = 1024; break;                  // max threads per block
        case 8: *v = 48 * 1024; break;             // shared memory per block
        case 10: *v = 32; break;                   // warp size
        case 13: *v = 1000000; break;              // clock rate (kHz)
        case 16: *v = 4; break;                    // SMs: small grids keep emulation quick
        case 19: *v = 1; break;                    // can map host memory
        case 31: *v = 1; break;                    // concurrent kernels
        case 33: *v = 0; break;                    // PCI bus
        case 36: *v = 1000000; break;              // memory clock (kHz)
        case 37: *v = 1024; break;                 // bus width
        case 38: *v = 4 << 20; break;              // L2 bytes
        case 39: *v = 2048; break;                 // threads per SM
        case 40: *v = 2; break;                    // copy engines
        case 41: *v = 1; break;                    // unified addressing
        case 75: *v = 9; break;                    // compute capability 9.0
        case 76: *v = 0; break;
        case 81: *v = 228 * 1024; break;           // shared memory per SM
        case 97: *v = 227 * 1024; break;           // opt-in shared memory per block
        case 106: *v = 32; break;                  // blocks per SM
        case 115: *v = 1; break;                   // memory pools
        default: *v = 0; break;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetDefaultMemPool(void** pool, int) {
    *pool = (void*)&g_ctx;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDeviceGetMemPool(void** pool, int d) { return cuDeviceGetDefaultMemPool(pool, d); }
EXPORT CUresult cuMemPoolSetAttribute(void*, int, void*) { return CUDA_SUCCESS; }
EXPORT CUresult cuMemPoolGetAttribute(void*, int, void* v) {
    std::memset(v, 0, 8);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemPoolTrimTo(void*, size_t) { return CUDA_SUCCESS; }

EXPORT CUresult cuDevicePrimaryCtxRetain(void** ctx, int d) {
    if (!g_init) return CUDA_ERROR_NOT_INITIALIZED;
    if (d < 0 || d >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &g_ctxs[d];
    return CUDA_SUCCESS;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxSetCurrent(void* ctx) {
    t_current = (Ctx*)ctx;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = t_current;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
EXPORT CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = t_current;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxGetDevice(int* d) {
    *d = t_current ? t_current->dev : 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSynchronize() {
    LOCK;
    for (Stream* s : g_streams)
        if (s->capture && (s->mode == 0 || s->thread == std::this_thread::get_id()))
            return invalidate(s, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuCtxSynchronize during capture");
    std::string e = wait_unblocked(drain_all);
    return e.empty() ? CUDA_SUCCESS : op_failed(e);
}
EXPORT CUresult cuCtxDestroy_v2(void*) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxSetFlags(unsigned) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
    *lo = 0;
    *hi = -1;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuCtxSetLimit(int, size_t) { return CUDA_SUCCESS; }
EXPORT CUresult cuCtxGetLimit(size_t* v, int) {
    *v = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemGetInfo_v2(size_t* free_, size_t* total) {
    LOCK;
    *total = total_mem();
    *free_ = total_mem() - g_mem_used;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemAlloc (synchronous allocation)")) return r;
    return dev_alloc(p, n);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemFree (synchronous free)")) return r;
    std::string e = wait_unblocked(drain_all);
    if (!e.empty()) return op_failed(e);
    if (g_graph_owned.count(p)) return CUDA_ERROR_INVALID_VALUE;
    return dev_free(p);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void* stream) {
    LOCK;
    Stream* s = stream_of(stream);
    if (s->capture && s->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    CUresult r = dev_alloc(p, n);
    if (r != CUDA_SUCCESS) return r;
    if (s->capture) {
        s->capture->allocs.insert(*p);
        g_graph_owned.insert(*p);
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t n, void*, void* stream) {
    return cuMemAllocAsync(p, n, stream);
}
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, void* stream) {
    LOCK;
    Stream* s = stream_of(stream);
    if (s->capture) {
        if (!s->capture->allocs.count(p)) {
            char buf[200];
            auto it = g_mem.find(p);
            std::snprintf(buf, sizeof buf,
                          "cuMemFreeAsync of %#lx (%zu bytes), which the capture did not allocate (a replayed graph "
                          "would free it again)",
                          (unsigned long)p, it == g_mem.end() ? (size_t)0 : it->second.size);
            return invalidate(s, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, buf);
        }
        s->capture->freed.insert(p);
        return s->invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
    }
    if (g_graph_owned.count(p)) {
        note("cuMemFreeAsync of %#lx, which belongs to a recorded graph", (unsigned long)p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!g_mem.count(p)) {
        note("cuMemFreeAsync of %#lx, which is not a live device allocation", (unsigned long)p);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return enqueue(s, [p]() -> std::string {
        dev_free(p);
        return "";
    });
}

EXPORT CUresult cuMemHostAlloc(void** pp, size_t n, unsigned) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemHostAlloc")) return r;
    void* p = nullptr;
    if (posix_memalign(&p, 4096, n ? n : 1) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    g_pinned_ranges[(uintptr_t)p] = n;
    *pp = p;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemAllocHost_v2(void** pp, size_t n) { return cuMemHostAlloc(pp, n, 0); }
EXPORT CUresult cuMemFreeHost(void* p) {
    LOCK;
    if (!g_pinned_ranges.erase((uintptr_t)p)) return CUDA_ERROR_INVALID_VALUE;
    // Implicitly synchronising: pending copies may still read it.
    std::string e = wait_unblocked(drain_all);
    if (!e.empty()) op_failed(e);
    std::free(p);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuMemHostRegister_v2(void*, size_t, unsigned) { return CUDA_SUCCESS; }
EXPORT CUresult cuMemHostUnregister(void*) { return CUDA_SUCCESS; }

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void* s) {
    LOCK;
    return copy_async(dst, true, (uintptr_t)src, false, n, s, "cuMemcpyHtoDAsync");
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    return copy_async((uintptr_t)dst, false, src, true, n, s, "cuMemcpyDtoHAsync");
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void* s) {
    LOCK;
    return copy_async(dst, true, src, true, n, s, "cuMemcpyDtoDAsync");
}
EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemcpyHtoD (synchronous copy)")) return r;
    return copy_async(dst, true, (uintptr_t)src, false, n, nullptr, "cuMemcpyHtoD");
}
EXPORT CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemcpyDtoH (synchronous copy)")) return r;
    return copy_async((uintptr_t)dst, false, src, true, n, nullptr, "cuMemcpyDtoH");
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemcpyDtoD (synchronous copy)")) return r;
    return copy_async(dst, true, src, true, n, nullptr, "cuMemcpyDtoD");
}
EXPORT CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void* s) {
    LOCK;
    if (n && !dev_range(dst, n)) return CUDA_ERROR_INVALID_VALUE;
    return enqueue(stream_of(s), [=]() -> std::string {
        std::memset((void*)dst, v, n);
        return "";
    });
}
EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    LOCK;
    if (CUresult r = unsafe_call("cuMemsetD8 (synchronous)")) return r;
    return cuMemsetD8Async(dst, v, n, nullptr);
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void* s) {
    LOCK;
    if (n && !dev_range(dst, n * 4)) return CUDA_ERROR_INVALID_VALUE;
    return enqueue(stream_of(s), [=]() -> std::string {
        for (size_t i = 0; i < n; i++) std::memcpy((char*)dst + 4 * i, &v, 4);
        return "";
    });
}

// ---------------------------------------------------------------- streams and events

EXPORT CUresult cuStreamCreate(void** s, unsigned) {
    LOCK;
    Stream* st = new Stream();
    int idx = g_streams_created++;
    st->deferred = (order_mode() == 1 && idx == 0) || (order_mode() == 2 && idx > 0);
    g_streams.insert(st);
    *s = st;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
EXPORT CUresult cuStreamDestroy_v2(void* s) {
    LOCK;
    Stream* st = (Stream*)s;
    if (!g_streams.count(st)) return CUDA_ERROR_INVALID_HANDLE;
    std::string e = wait_unblocked([st] { return drain(st); });  // queued work still runs
    g_streams.erase(st);
    delete st;
    if (!e.empty()) return op_failed(e);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamSynchronize(void* s) {
    LOCK;
    return sync_stream(stream_of(s), "cuStreamSynchronize on a capturing stream");
}
EXPORT CUresult cuStreamQuery(void* s) {
    LOCK;
    return sync_stream(stream_of(s), "cuStreamQuery on a capturing stream");
}
std::shared_ptr<Event> event_of(void* e) { return ((EventBox*)e)->e; }

EXPORT CUresult cuStreamWaitEvent(void* s, void* e, unsigned) {
    LOCK;
    Stream* st = stream_of(s);
    std::shared_ptr<Event> ev = event_of(e);
    if (st->capture && ev->captured_in != st->capture)
        return invalidate(st, CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                          "a capturing stream waits for an event recorded outside the capture");
    if (!st->capture && ev->captured_in) {
        note("a stream waits for an event recorded in a capture: joining streams into a capture is not emulated");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (st->capture || !ev->recorded || ev->done_gen >= ev->gen) return CUDA_SUCCESS;
    // The waiting stream's later work needs the event's stream up to the record.
    uint64_t gen = ev->gen;
    Stream* src = ev->stream;
    return enqueue(st, [ev, gen, src]() -> std::string {
        if (ev->done_gen >= gen) return "";
        if (!g_streams.count(src)) return "an event's stream was destroyed before its record ran";
        std::string r = drain(src, ev.get(), gen);
        return r.empty() && ev->done_gen < gen ? kPending : r;
    });
}
EXPORT CUresult cuLaunchHostFunc(void* s, void (*fn)(void*), void* data) {
    LOCK;
    return enqueue(stream_of(s), [=]() -> std::string {
        fn(data);
        return "";
    });
}
EXPORT CUresult cuEventCreate(void** e, unsigned) {
    *e = new EventBox{std::make_shared<Event>()};
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventDestroy_v2(void* e) {
    LOCK;
    delete (EventBox*)e;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventRecord(void* e, void* s) {
    LOCK;
    std::shared_ptr<Event> ev = event_of(e);
    Stream* st = stream_of(s);
    ev->recorded = true;
    if (st->capture) {
        ev->captured_in = st->capture;
        return CUDA_SUCCESS;
    }
    ev->captured_in = nullptr;
    ev->stream = st;
    uint64_t gen = ++ev->gen;
    return enqueue(st, [ev, gen]() -> std::string {
        if (ev->done_gen < gen) {
            ev->done_gen = gen;
            ev->t = now_ms();
        }
        return "";
    });
}
EXPORT CUresult cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }

// Wait for the event's last record (`force`: run what it needs).
CUresult event_sync(void* e, const char* what) {
    std::shared_ptr<Event> ev = event_of(e);
    if (ev->captured_in) {
        for (Stream* s : g_streams)
            if (s->capture == ev->captured_in)
                return invalidate(s, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "synchronising on a captured event");
    }
    if (CUresult r = unsafe_call(what)) return r;
    if (!ev->recorded || ev->done_gen >= ev->gen || !ev->stream) return CUDA_SUCCESS;
    if (!g_streams.count(ev->stream)) return CUDA_ERROR_INVALID_HANDLE;
    Stream* st = ev->stream;
    uint64_t gen = ev->gen;
    std::string err = wait_unblocked([&] { return drain(st, ev.get(), gen); });
    return err.empty() ? CUDA_SUCCESS : op_failed(err);
}
EXPORT CUresult cuEventSynchronize(void* e) {
    LOCK;
    return event_sync(e, "cuEventSynchronize");
}
EXPORT CUresult cuEventQuery(void* e) {
    LOCK;
    std::shared_ptr<Event> ev = event_of(e);
    if (ev->recorded && !ev->captured_in && ev->done_gen < ev->gen && ev->queried_gen < ev->gen) {
        // Pending: say so once, then let it complete (a GPU finishes eventually).
        ev->queried_gen = ev->gen;
        return 600;  // CUDA_ERROR_NOT_READY
    }
    if (ev->recorded && !ev->captured_in && ev->done_gen < ev->gen && ev->stream && g_streams.count(ev->stream)) {
        // Behind a collective still waiting for its peers: not ready yet.
        std::string err = drain(ev->stream, ev.get(), ev->gen);
        if (err == kPending) return 600;
        if (!err.empty()) return op_failed(err);
    }
    return event_sync(e, "cuEventQuery");
}
EXPORT CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    LOCK;
    std::shared_ptr<Event> ea = event_of(a), eb = event_of(b);
    if (!ea->recorded || !eb->recorded || ea->captured_in || eb->captured_in) return CUDA_ERROR_INVALID_HANDLE;
    if (ea->done_gen < ea->gen || eb->done_gen < eb->gen) return 600;  // CUDA_ERROR_NOT_READY
    *ms = (float)(eb->t - ea->t);
    return CUDA_SUCCESS;
}
EXPORT CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---------------------------------------------------------------- capture and graphs

EXPORT CUresult cuStreamBeginCapture_v2(void* s, int mode) {
    LOCK;
    Stream* st = stream_of(s);
    if (st == &g_legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (st->capture) return CUDA_ERROR_ILLEGAL_STATE;
    auto g = std::make_shared<Graph>();
    g_graphs[g.get()] = g;
    st->capture = g.get();
    st->invalidated = false;
    st->mode = mode;
    st->thread = std::this_thread::get_id();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamBeginCapture(void* s, int mode) { return cuStreamBeginCapture_v2(s, mode); }
EXPORT CUresult cuStreamIsCapturing(void* s, int* status) {
    LOCK;
    Stream* st = stream_of(s);
    *status = st->capture ? (st->invalidated ? 2 : 1) : 0;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuStreamEndCapture(void* s, void** graph) {
    LOCK;
    Stream* st = stream_of(s);
    if (!st->capture) return CUDA_ERROR_ILLEGAL_STATE;
    if (st->thread != std::this_thread::get_id() && st->mode != 2) return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    Graph* g = st->capture;
    st->capture = nullptr;
    *graph = nullptr;
    if (st->invalidated) {
        st->invalidated = false;
        release_graph_allocs(g);
        g_graphs.erase(g);
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    *graph = g;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    LOCK;
    auto it = g_graphs.find((Graph*)graph);
    if (it == g_graphs.end()) return CUDA_ERROR_INVALID_HANDLE;
    *exec = new GraphExec{it->second};
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphUpload(void*, void*) { return CUDA_SUCCESS; }
EXPORT CUresult cuGraphLaunch(void* exec, void* s) {
    LOCK;
    GraphExec* x = (GraphExec*)exec;
    Stream* st = stream_of(s);
    if (st->capture) return invalidate(st, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "graph launch inside a capture");
    for (uintptr_t p : x->g->allocs) {
        if (!x->g->freed.count(p)) {
            note("graph launch: memory the graph allocated at %#lx is never freed inside it, so the graph cannot be "
                 "launched again while it lives",
                 (unsigned long)p);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    auto g = x->g;
    return enqueue(st, [g]() -> std::string {
        for (auto& op : g->ops) {
            std::string e = op();
            if (!e.empty()) return "in a graph replay: " + e;
        }
        return "";
    });
}
EXPORT CUresult cuGraphExecDestroy(void* exec) {
    LOCK;
    delete (GraphExec*)exec;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGraphDestroy(void* graph) {
    LOCK;
    auto it = g_graphs.find((Graph*)graph);
    if (it == g_graphs.end()) return CUDA_ERROR_INVALID_HANDLE;
    release_graph_allocs(it->first);
    g_graphs.erase(it);
    return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- modules and launches

EXPORT CUresult cuModuleLoadData(void** module, const void* image) {
    LOCK;
    char want[64];
    std::snprintf(want, sizeof want, "// tessera-cuda-emu fnv=%016llx", (unsigned long long)EMU_SOURCE_HASH);
    if (std::strncmp((const char*)image, want, std::strlen(want)) != 0) {
        note("cuModuleLoadData: the image is not this emulator's (built from other kernel sources, or real PTX)");
        return CUDA_ERROR_INVALID_PTX;
    }
    *module = new Module();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleUnload(void* module) {
    delete (Module*)module;
    return CUDA_SUCCESS;
}
EXPORT CUresult cuModuleGetFunction(void** fn, void* module, const char* name) {
    LOCK;
    auto it = registry().find(name);
    if (it == registry().end()) return CUDA_ERROR_NOT_FOUND;
    Module* m = (Module*)module;
    m->fns.push_back(std::make_unique<Function>());
    m->fns.back()->k = &it->second;
    *fn = m->fns.back().get();
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncSetAttribute(void* fn, int attr, int v) {
    LOCK;
    if (attr == 8) {
        if (v > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
        ((Function*)fn)->max_dyn_smem = v;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncGetAttribute(int* v, int attr, void* fn) {
    switch (attr) {
        case 0: *v = 1024; break;                                 // max threads per block
        case 1: *v = 0; break;                                    // static shared bytes (not tracked)
        case 4: *v = 64; break;                                   // registers
        case 8: *v = ((Function*)fn)->max_dyn_smem; break;
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuFuncSetCacheConfig(void*, int) { return CUDA_SUCCESS; }
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int block, size_t smem) {
    int by_threads = block > 0 ? 2048 / block : 1;
    int by_smem = (int)((228 * 1024) / (smem + 1024));
    *n = std::max(1, std::min(by_threads, by_smem));
    return CUDA_SUCCESS;
}
EXPORT CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void* f, int block, size_t smem,
                                                                      unsigned) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem);
}

EXPORT CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned smem, void* stream, void** params, void** extra) {
    LOCK;
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    return launch(LaunchArgs{(Function*)f, dim3{gx, gy, gz}, dim3{bx, by, bz}, smem, stream, params});
}

struct CUlaunchConfig {
    unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    void* hStream;
    void* attrs;
    unsigned numAttrs;
};

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig* c, void* f, void** params, void** extra) {
    LOCK;
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;
    // Launch attributes (programmatic dependent launch) change only timing here.
    return launch(LaunchArgs{(Function*)f, dim3{c->gridDimX, c->gridDimY, c->gridDimZ},
                             dim3{c->blockDimX, c->blockDimY, c->blockDimZ}, c->sharedMemBytes, c->hStream, params});
}

EXPORT CUresult cuGetErrorString(CUresult r, const char** s) {
    switch (r) {
        case CUDA_SUCCESS: *s = "no error"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "out of memory"; break;
        case CUDA_ERROR_NOT_INITIALIZED: *s = "initialization error"; break;
        case CUDA_ERROR_INVALID_DEVICE: *s = "invalid device ordinal"; break;
        case CUDA_ERROR_INVALID_PTX: *s = "a PTX JIT compilation failed"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "invalid resource handle"; break;
        case CUDA_ERROR_ILLEGAL_STATE: *s = "the operation cannot be performed in the present state"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "named symbol not found"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "unspecified launch failure (see the emulator's message)"; break;
        case CUDA_ERROR_NOT_SUPPORTED: *s = "operation not supported"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "operation not permitted when stream is capturing"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED:
            *s = "operation failed due to a previous error during capture";
            break;
        case CUDA_ERROR_STREAM_CAPTURE_ISOLATION:
            *s = "operation would make the legacy stream depend on a capturing blocking stream";
            break;
        case CUDA_ERROR_STREAM_CAPTURE_IMPLICIT:
            *s = "operation would make the legacy stream depend on a capturing blocking stream";
            break;
        case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD:
            *s = "attempt to terminate a thread-local capture sequence from another thread";
            break;
        default: *s = "unknown error"; break;
    }
    return CUDA_SUCCESS;
}
EXPORT CUresult cuGetErrorName(CUresult r, const char** s) {
    switch (r) {
        case CUDA_SUCCESS: *s = "CUDA_SUCCESS"; break;
        case CUDA_ERROR_INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case CUDA_ERROR_INVALID_PTX: *s = "CUDA_ERROR_INVALID_PTX"; break;
        case CUDA_ERROR_INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case CUDA_ERROR_NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *s = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *s = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
        case CUDA_ERROR_STREAM_CAPTURE_ISOLATION: *s = "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"; break;
        default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return CUDA_SUCCESS;
}

// ================================================================= NVRTC

namespace {
struct Program {
    std::string src, ptx, log;
};
uint64_t fnv1a(const char* s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}
}  // namespace

EXPORT int nvrtcVersion(int* major, int* minor) {
    // Not a real NVRTC: 0.0 keeps its output out of the real PTX's cache files.
    *major = 0;
    *minor = 0;
    return 0;
}
EXPORT const char* nvrtcGetErrorString(int r) {
    return r == 0 ? "NVRTC_SUCCESS" : r == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR (emulator)";
}
EXPORT int nvrtcCreateProgram(void** prog, const char* src, const char*, int, const char* const*, const char* const*) {
    Program* p = new Program();
    p->src = src ? src : "";
    *prog = p;
    return 0;
}
EXPORT int nvrtcDestroyProgram(void** prog) {
    delete (Program*)*prog;
    *prog = nullptr;
    return 0;
}
EXPORT int nvrtcCompileProgram(void* prog, int, const char* const*) {
    Program* p = (Program*)prog;
    uint64_t h = fnv1a(p->src.c_str());
    if (h != (uint64_t)EMU_SOURCE_HASH) {
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "tessera-cuda-emu: the kernel source (fnv %016llx) is not the one this emulator was built "
                      "from (%016llx); rebuild it with scripts/cuda-emu.sh\n",
                      (unsigned long long)h, (unsigned long long)EMU_SOURCE_HASH);
        p->log = buf;
        return 6;  // NVRTC_ERROR_COMPILATION
    }
    char head[64];
    std::snprintf(head, sizeof head, "// tessera-cuda-emu fnv=%016llx\n", (unsigned long long)EMU_SOURCE_HASH);
    p->ptx = head;
    for (auto& [name, k] : registry()) p->ptx += ".visible .entry " + name + "()\n";
    p->log.clear();
    return 0;
}
EXPORT int nvrtcGetPTXSize(void* prog, size_t* n) {
    *n = ((Program*)prog)->ptx.size() + 1;
    return 0;
}
EXPORT int nvrtcGetPTX(void* prog, char* out) {
    std::string& s = ((Program*)prog)->ptx;
    std::memcpy(out, s.c_str(), s.size() + 1);
    return 0;
}
EXPORT int nvrtcGetProgramLogSize(void* prog, size_t* n) {
    *n = ((Program*)prog)->log.size() + 1;
    return 0;
}
EXPORT int nvrtcGetProgramLog(void* prog, char* out) {
    std::string& s = ((Program*)prog)->log;
    std::memcpy(out, s.c_str(), s.size() + 1);
    return 0;
}

// ================================================================= cuBLAS

namespace {
struct Blas {
    void* stream = nullptr;
};

float bf16_to_f32(uint16_t b) { return __uint_as_float((unsigned)b << 16); }
float f16_to_f32(uint16_t h) {
    unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = std::ldexp((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = std::ldexp((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}

// Element (r, c) of a column-major matrix with leading dimension ld, of type t
// (0 f32, 2 f16, 14 bf16).
float elem(const void* a, int t, long ld, long r, long c) {
    size_t i = (size_t)(c * ld + r);
    switch (t) {
        case 0: return ((const float*)a)[i];
        case 2: return f16_to_f32(((const uint16_t*)a)[i]);
        case 14: return bf16_to_f32(((const uint16_t*)a)[i]);
    }
    return NAN;
}
size_t elem_size(int t) { return t == 0 ? 4 : 2; }

// C = alpha op(A) op(B) + beta C, column-major, C in f32.
std::string gemm(int ta, int tb, int m, int n, int k, float alpha, const void* A, int at, int lda, const void* B,
                 int bt, int ldb, float beta, float* C, int ldc) {
    long ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    if (!dev_range((uintptr_t)A, (size_t)((ac - 1) * lda + ar) * elem_size(at)) ||
        !dev_range((uintptr_t)B, (size_t)((bc - 1) * ldb + br) * elem_size(bt)) ||
        !dev_range((uintptr_t)C, (size_t)((n - 1) * (long)ldc + m) * 4))
        return "cuBLAS gemm: an operand is not inside one live device allocation";
    // op(A) as rows of length k (ar[i][p]), op(B) as columns of length k (bc[j][p]).
    std::vector<float> a((size_t)m * k), b((size_t)n * k), out((size_t)m * n);
    for (long i = 0; i < m; i++)
        for (long p = 0; p < k; p++) a[(size_t)i * k + p] = ta ? elem(A, at, lda, p, i) : elem(A, at, lda, i, p);
    for (long j = 0; j < n; j++)
        for (long p = 0; p < k; p++) b[(size_t)j * k + p] = tb ? elem(B, bt, ldb, j, p) : elem(B, bt, ldb, p, j);
    for (long j = 0; j < n; j++)
        for (long i = 0; i < m; i++) {
            const float* x = &a[(size_t)i * k];
            const float* y = &b[(size_t)j * k];
            float acc = 0.f;
            for (long p = 0; p < k; p++) acc = std::fma(x[p], y[p], acc);
            out[(size_t)j * m + i] = acc;
        }
    for (long j = 0; j < n; j++)
        for (long i = 0; i < m; i++) {
            float& c = C[(size_t)j * ldc + i];
            c = beta == 0.f ? alpha * out[(size_t)j * m + i] : alpha * out[(size_t)j * m + i] + beta * c;
        }
    return "";
}

int blas_gemm(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int at, int lda,
              const void* B, int bt, int ldb, const float* beta, void* C, int ct, int ldc) {
    LOCK;
    if (ct != 0 || (at != 0 && at != 2 && at != 14) || (bt != 0 && bt != 2 && bt != 14) || ta > 1 || tb > 1)
        return 15;  // CUBLAS_STATUS_NOT_SUPPORTED
    if (m < 0 || n < 0 || k < 0) return 7;  // CUBLAS_STATUS_INVALID_VALUE
    if (m == 0 || n == 0) return 0;
    float al = *alpha, be = *beta;  // host pointer mode: read at the call
    CUresult r = enqueue(stream_of(((Blas*)h)->stream), [=]() -> std::string {
        return gemm(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, (float*)C, ldc);
    });
    return r == CUDA_SUCCESS ? 0 : 13;  // CUBLAS_STATUS_EXECUTION_FAILED
}
}  // namespace

EXPORT int cublasCreate_v2(void** h) {
    *h = new Blas();
    return 0;
}
EXPORT int cublasDestroy_v2(void* h) {
    delete (Blas*)h;
    return 0;
}
EXPORT int cublasSetStream_v2(void* h, void* s) {
    ((Blas*)h)->stream = s;
    return 0;
}
EXPORT int cublasGetStream_v2(void* h, void** s) {
    *s = ((Blas*)h)->stream;
    return 0;
}
EXPORT int cublasSetWorkspace_v2(void*, void*, size_t) { return 0; }
EXPORT int cublasSetMathMode(void*, int) { return 0; }
EXPORT int cublasSetPointerMode_v2(void*, int mode) { return mode == 0 ? 0 : 15; }
EXPORT int cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                          const float* B, int ldb, const float* beta, float* C, int ldc) {
    return blas_gemm(h, ta, tb, m, n, k, alpha, A, 0, lda, B, 0, ldb, beta, C, 0, ldc);
}
EXPORT int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                        const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int) {
    if (compute != 68 && compute != 77 && compute != 74) return 15;  // 32F, 32F_FAST_TF32, 32F_FAST_16BF
    return blas_gemm(h, ta, tb, m, n, k, (const float*)alpha, A, at, lda, B, bt, ldb, (const float*)beta, C, ct, ldc);
}
EXPORT const char* cublasGetStatusString(int s) { return s == 0 ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_ERROR"; }
EXPORT const char* cublasGetStatusName(int s) { return cublasGetStatusString(s); }

// ================================================================= NCCL
//
// Ranks are processes (or threads) on this machine. A communicator is a
// folder named by the unique id (/dev/shm, else the temp folder); each rank
// announces itself with a file, and collective number k of rank r is the file
// `op<k>-<r>`, written from device memory when the collective runs on its
// stream. The collective completes once every rank's file is there: sums are
// taken in rank order, so every rank gets the same bits. Until then the stream
// stops at it (events after it are not ready), as on a GPU, so the caller's
// watchdog sees a missing peer; ncclCommAbort fails it.

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

namespace {
enum : int {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
};

struct Comm {
    std::string dir;
    int rank = 0, world = 1;
    bool ready = false, aborted = false;
    uint64_t next_seq = 0;
    std::string last_error;
};
struct CommBox {
    std::shared_ptr<Comm> c;
};

std::string comm_file(const Comm& c, const std::string& name) { return c.dir + "/" + name; }

bool file_exists(const std::string& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0;
}

bool write_file(const std::string& path, const void* data, size_t n) {
    std::string tmp = path + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return false;
    const char* p = (const char*)data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w <= 0) {
            close(fd);
            return false;
        }
        p += w;
        left -= (size_t)w;
    }
    close(fd);
    return rename(tmp.c_str(), path.c_str()) == 0;
}

bool read_file(const std::string& path, std::vector<char>& out, size_t n) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return false;
    out.resize(n);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, out.data() + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    return got == n;
}

bool all_joined(const Comm& c) {
    for (int r = 0; r < c.world; r++)
        if (!file_exists(comm_file(c, "join-" + std::to_string(r)))) return false;
    return true;
}

// A rank leaves; peers may still read its last files, so the folder goes
// only when every rank has left (a rank that dies leaves it behind).
void leave(const Comm& c) {
    write_file(comm_file(c, "left-" + std::to_string(c.rank)), "", 0);
    for (int r = 0; r < c.world; r++)
        if (!file_exists(comm_file(c, "left-" + std::to_string(r)))) return;
    DIR* d = opendir(c.dir.c_str());
    if (!d) return;
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
    for (auto& n : names) unlink(comm_file(c, n).c_str());
    rmdir(c.dir.c_str());
}

// Communicators this process has not destroyed: a process that ends with
// exit() (a worker whose launcher went away) leaves them here.
std::set<std::shared_ptr<Comm>> g_live_comms;
struct LeaveAtExit {
    ~LeaveAtExit() {
        for (auto& c : g_live_comms) leave(*c);
    }
} g_leave_at_exit;

enum class Coll { AllReduce, AllGather, Broadcast };

int coll_enqueue(void* comm, Coll kind, const void* send, void* recv, size_t count, int dtype, int op, int root,
                 void* stream) {
    LOCK;
    std::shared_ptr<Comm> c = ((CommBox*)comm)->c;
    if (c->aborted) return ncclInvalidUsage;
    if (!c->ready) {
        c->last_error = "a collective before the communicator finished initialising";
        return ncclInvalidUsage;
    }
    size_t esize = dtype == 7 ? 4 : (dtype == 0 || dtype == 1) ? 1 : 0;  // float32, int8/uint8
    if (esize == 0 || (kind == Coll::AllReduce && (dtype != 7 || op != 0)) || root < 0 || root >= c->world) {
        c->last_error = "the emulator's NCCL does float32 sums and byte copies only";
        return ncclInvalidArgument;
    }
    size_t bytes = count * esize;
    size_t out_bytes = kind == Coll::AllGather ? bytes * (size_t)c->world : bytes;
    if (bytes && (!dev_range((uintptr_t)send, bytes) || !dev_range((uintptr_t)recv, out_bytes))) {
        c->last_error = "a buffer is not inside one live device allocation";
        return ncclInvalidArgument;
    }
    uint64_t seq = c->next_seq++;
    auto written = std::make_shared<bool>(false);
    CUresult r = enqueue(stream_of(stream), [=]() -> std::string {
        if (c->aborted) return "NCCL collective on an aborted communicator";
        std::string mine = comm_file(*c, "op" + std::to_string(seq) + "-" + std::to_string(c->rank));
        if (!*written) {
            if (!write_file(mine, send, bytes)) return "NCCL emulation: cannot write " + mine;
            *written = true;
        }
        for (int q = 0; q < c->world; q++)
            if (!file_exists(comm_file(*c, "op" + std::to_string(seq) + "-" + std::to_string(q)))) return kPending;
        std::vector<std::vector<char>> parts(c->world);
        for (int q = 0; q < c->world; q++) {
            std::string f = comm_file(*c, "op" + std::to_string(seq) + "-" + std::to_string(q));
            if (!read_file(f, parts[q], bytes)) return "NCCL emulation: cannot read " + f;
        }
        if (kind == Coll::AllReduce) {
            std::vector<float> acc(count, 0.f);
            for (int q = 0; q < c->world; q++) {
                const float* v = (const float*)parts[q].data();
                for (size_t i = 0; i < count; i++) acc[i] += v[i];
            }
            if (bytes) std::memcpy(recv, acc.data(), bytes);
        } else if (kind == Coll::AllGather) {
            for (int q = 0; q < c->world; q++)
                if (bytes) std::memcpy((char*)recv + (size_t)q * bytes, parts[q].data(), bytes);
        } else {
            if (bytes) std::memcpy(recv, parts[root].data(), bytes);
        }
        // Every rank has finished collective seq - 1, so nobody reads seq - 2 any more.
        if (seq >= 2)
            unlink(comm_file(*c, "op" + std::to_string(seq - 2) + "-" + std::to_string(c->rank)).c_str());
        return "";
    });
    return r == CUDA_SUCCESS ? ncclSuccess : ncclUnhandledCudaError;
}
}  // namespace

struct ncclUniqueId {
    char internal[128];
};

EXPORT int ncclGetVersion(int* v) {
    *v = 22803;  // reports 2.28.3
    return ncclSuccess;
}
EXPORT int ncclGetUniqueId(ncclUniqueId* id) {
    std::memset(id->internal, 0, sizeof id->internal);
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0) return ncclSystemError;
    ssize_t n = read(fd, id->internal, 16);
    close(fd);
    return n == 16 ? ncclSuccess : ncclSystemError;
}
EXPORT const char* ncclGetErrorString(int r) {
    switch (r) {
        case ncclSuccess: return "no error";
        case ncclUnhandledCudaError: return "unhandled cuda error (emulator)";
        case ncclSystemError: return "unhandled system error (emulator)";
        case ncclInvalidArgument: return "invalid argument (emulator)";
        case ncclInvalidUsage: return "invalid usage (emulator)";
        case ncclRemoteError: return "remote process exited or there was a network error (emulator)";
        case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown NCCL error (emulator)";
}
EXPORT const char* ncclGetLastError(void* comm) {
    static thread_local std::string s;
    s = comm ? ((CommBox*)comm)->c->last_error : "";
    return s.c_str();
}
EXPORT int ncclCommInitRankConfig(void** comm, int nranks, ncclUniqueId id, int rank, void* config) {
    LOCK;
    if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    char hex[33];
    for (int i = 0; i < 16; i++) std::snprintf(hex + 2 * i, 3, "%02x", (unsigned char)id.internal[i]);
    const char* base = file_exists("/dev/shm") ? "/dev/shm" : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
    auto c = std::make_shared<Comm>();
    c->dir = std::string(base) + "/tessera-emu-nccl-" + hex;
    c->rank = rank;
    c->world = nranks;
    mkdir(c->dir.c_str(), 0700);
    std::string me = comm_file(*c, "join-" + std::to_string(rank));
    if (!write_file(me, "", 0)) return ncclSystemError;
    *comm = new CommBox{c};
    g_live_comms.insert(c);
    // A non-blocking config (blocking = 0 at offset 16) returns at once; the
    // caller polls ncclCommGetAsyncError until every rank has joined.
    bool blocking = !config || *(const int*)((const char*)config + 16) != 0;
    if (!blocking) return ncclInProgress;
    auto t0 = std::chrono::steady_clock::now();
    while (!all_joined(*c)) {
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(300)) return ncclSystemError;
        g_mu.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        g_mu.lock();
    }
    c->ready = true;
    return ncclSuccess;
}
EXPORT int ncclCommInitRank(void** comm, int nranks, ncclUniqueId id, int rank) {
    return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}
EXPORT int ncclCommGetAsyncError(void* comm, int* state) {
    LOCK;
    std::shared_ptr<Comm> c = ((CommBox*)comm)->c;
    if (!c->ready && all_joined(*c)) c->ready = true;
    *state = c->ready ? ncclSuccess : ncclInProgress;
    // Let queued collectives progress while the caller polls.
    for (Stream* s : g_streams)
        if (!s->deferred && !s->queue.empty()) drain(s);
    return ncclSuccess;
}
EXPORT int ncclAllReduce(const void* send, void* recv, size_t count, int dtype, int op, void* comm, void* stream) {
    return coll_enqueue(comm, Coll::AllReduce, send, recv, count, dtype, op, 0, stream);
}
EXPORT int ncclAllGather(const void* send, void* recv, size_t count, int dtype, void* comm, void* stream) {
    return coll_enqueue(comm, Coll::AllGather, send, recv, count, dtype, 0, 0, stream);
}
EXPORT int ncclBroadcast(const void* send, void* recv, size_t count, int dtype, int root, void* comm, void* stream) {
    return coll_enqueue(comm, Coll::Broadcast, send, recv, count, dtype, 0, root, stream);
}
EXPORT int ncclGroupStart() { return ncclSuccess; }
EXPORT int ncclGroupEnd() { return ncclSuccess; }
EXPORT int ncclCommAbort(void* comm) {
    LOCK;
    CommBox* b = (CommBox*)comm;
    b->c->aborted = true;
    g_live_comms.erase(b->c);
    leave(*b->c);
    delete b;
    return ncclSuccess;
}
EXPORT int ncclCommFinalize(void*) { return ncclSuccess; }
EXPORT int ncclCommDestroy(void* comm) {
    LOCK;
    CommBox* b = (CommBox*)comm;
    g_live_comms.erase(b->c);
    leave(*b->c);
    delete b;
    return ncclSuccess;
}
EXPORT int ncclCommCount(void* comm, int* n) {
    *n = ((CommBox*)comm)->c->world;
    return ncclSuccess;
}
EXPORT int ncclCommUserRank(void* comm, int* r) {
    *r = ((CommBox*)comm)->c->rank;
    return ncclSuccess;
}
