/* RKE_AVX2_BEGIN / RKE_AVX2_END bracket a *_avx2.c file: AVX2, FMA and F16C for the functions in
 * between only (RKE_AVXVNNI_BEGIN / END: those and AVX-VNNI, for *_avxvnni.c). The library is built for the baseline CPU and dispatch checks the CPU before
 * calling in; on other CPUs such a file compiles to nothing. Macros, not pragmas in a header, so
 * that clang's push and pop sit in the same file. */
#ifndef RKE_AVX2_TARGET_H
#define RKE_AVX2_TARGET_H

#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#define RKE_AVX2_BEGIN                                                                          \
    _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define RKE_AVX2_END _Pragma("clang attribute pop")
#else
#define RKE_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define RKE_AVX2_END _Pragma("GCC pop_options")
#endif
#else
#define RKE_AVX2_BEGIN
#define RKE_AVX2_END
#endif

/* AVX-VNNI (vpdpbusd on 256-bit registers, VEX-encoded): compilers that ship its header (gcc 11,
 * LLVM clang 12; Apple's clang numbers its versions differently, so the header is the test). */
#if defined(__has_include)
#if (defined(__x86_64__) || defined(__i386__)) && __has_include(<avxvnniintrin.h>)
#define RKE_AVXVNNI_HEADER 1
#endif
#endif
#if defined(RKE_AVXVNNI_HEADER)
#define RKE_HAVE_AVXVNNI 1
#if defined(__clang__)
#define RKE_AVXVNNI_BEGIN                                                                       \
    _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c,avxvnni\"))), apply_to = function)")
#define RKE_AVXVNNI_END _Pragma("clang attribute pop")
#else
#define RKE_AVXVNNI_BEGIN                                                                       \
    _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,avxvnni\")")
#define RKE_AVXVNNI_END _Pragma("GCC pop_options")
#endif
#else
#define RKE_HAVE_AVXVNNI 0
#define RKE_AVXVNNI_BEGIN
#define RKE_AVXVNNI_END
#endif

#endif
