/* The quantized kernels with AVX-VNNI (the VEX-encoded vpdpbusd of Alder Lake, Sapphire Rapids, Zen 5):
 * rke_matmul_quant_x86.h's body, a block's products summed by vpdpbusd instead of maddubs and madd.
 * The same integers, so the same bits; about 20 % more prompt tokens per second and 5 % faster decode
 * (docs/benchmarks.md). Compilers too old for -mavxvnni leave this file empty. */
#include "rke_avx2_target.h"

#if RKE_HAVE_AVXVNNI
RKE_AVXVNNI_BEGIN /* to RKE_AVXVNNI_END: AVX2, FMA, F16C and AVX-VNNI code */
#include "rke_avx2.h"
#define RKE_VNNI 1
#define RKE_QUANT_ISA avxvnni
#include "rke_matmul_quant_x86.h"
RKE_AVXVNNI_END
#else
typedef int rke_matmul_quant_avxvnni_is_empty_here;
#endif
