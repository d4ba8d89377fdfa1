/* fp16 -> float32 for every one of the 65536 halves (256 KiB), filled once when the library is
 * loaded and only read afterwards. The AVX2 decode kernels look a block's scale up here: one
 * load, where F16C's broadcast and convert take two shuffle-port uops per block and row, on the
 * port the nibble unpacking also needs (measured: about 20 % more Q4_0 rows per second). The
 * values are rke_fp16_to_f32's, so the bits do not change. */
#include "rke_internal.h"

#if RKE_X86 /* only the x86 kernels read it */
float rke_fp16_table[65536];

__attribute__((constructor)) static void fill_fp16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) rke_fp16_table[h] = rke_fp16_to_f32((uint16_t)h);
}
#else
typedef int rke_fp16_table_is_empty_here;
#endif
