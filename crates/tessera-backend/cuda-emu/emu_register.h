// Registration of the emulated kernels: the generated kernels file ends with
// one EMU_KERNEL(name) per `extern "C" __global__` function, which records its
// name, its parameter sizes (for copying arguments at launch, as the driver
// does) and a thunk that calls it with arguments from a `void**` array.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace emu {

struct KernelInfo {
    const char* name;
    void* fn;
    void (*invoke)(void* fn, void** params);
    const size_t* sizes;
    size_t nparams;
};

void register_kernel(const KernelInfo& k);

template <class... A, size_t... I>
void invoke_impl(void* f, void** p, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(f)(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}

template <class... A>
void invoke(void* f, void** p) {
    invoke_impl<A...>(f, p, std::index_sequence_for<A...>{});
}

template <class... A>
struct Sizes {
    static constexpr size_t value[sizeof...(A) + 1] = {sizeof(A)..., 0};
};

struct Reg {
    template <class... A>
    Reg(const char* name, void (*f)(A...)) {
        register_kernel(KernelInfo{name, reinterpret_cast<void*>(f), &invoke<A...>, Sizes<A...>::value, sizeof...(A)});
    }
};

}  // namespace emu

#define EMU_KERNEL(name) static emu::Reg emu_reg_##name(#name, &name);
