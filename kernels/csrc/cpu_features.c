/* Which vector extensions this process may use: CPUID says the CPU has them, XGETBV says the OS
 * saves the registers (libsodium's sequence; without the second check AVX code can SIGILL). */
#include "rke_avx2_target.h"
#include "rke_internal.h"

#if RKE_X86
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

int rke_cpu_features(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int osxsave = 1u << 27, avx = 1u << 28, fma = 1u << 12, f16c = 1u << 29;
    if (!(ecx & osxsave) || !(ecx & avx)) return 0;
    if ((xgetbv0() & 6) != 6) return 0; /* XMM and YMM state enabled by the OS */
    int features = RKE_CPU_AVX;
    if (ecx & fma) features |= RKE_CPU_FMA;
    if (ecx & f16c) features |= RKE_CPU_F16C;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, eax, ebx, ecx, edx);
        if (ebx & (1u << 5)) features |= RKE_CPU_AVX2;
        if (eax >= 1) { /* subleaf 1 exists: its EAX bit 4 is AVX-VNNI */
            __cpuid_count(7, 1, eax, ebx, ecx, edx);
            if (eax & (1u << 4)) features |= RKE_CPU_AVXVNNI;
        }
    }
    return features;
}
#else
int rke_cpu_features(void) { return 0; }
#endif

int rke_impl_compiled(int impl) {
    if (impl == RKE_IMPL_SCALAR) return 1;
    if (impl == RKE_IMPL_AVX2) return RKE_X86;
    if (impl == RKE_IMPL_AVXVNNI) return RKE_HAVE_AVXVNNI;
    return 0;
}
