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

/* AVX-VNNI (vpdpbusd on 256-bit registers, VEX-encoded): gcc 11 and clang 12 know it. */
#if (defined(__x86_64__) || defined(__i386__)) &&                                           \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
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
