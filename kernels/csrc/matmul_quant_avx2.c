/* The quantized kernels with AVX2: rke_matmul_quant_x86.h's body, block sums by maddubs and madd. */
#include "rke_avx2_target.h"
RKE_AVX2_BEGIN /* to RKE_AVX2_END: AVX2, FMA and F16C code */
#include "rke_avx2.h"

#if RKE_X86
#define RKE_VNNI 0
#define RKE_QUANT_ISA avx2
#include "rke_matmul_quant_x86.h"
#else
typedef int rke_matmul_quant_avx2_is_empty_here;
#endif

RKE_AVX2_END
