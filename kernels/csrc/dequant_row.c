/* One row of a stored matrix as float32 (the embedding lookup): the values quant/blocks.py's
 * dequantizers give, bit for bit (one product, or product then sum, per element). */
#include "rke_model_internal.h"

static inline uint16_t u16_at(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t u32_at(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ggml's kvalues_iq4nl (rke_kernels.h) */
static const int8_t IQ4_NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                         1,    13,   25,  38,  53,  69,  89,  113};

int64_t rke_row_bytes(int qtype, int64_t n) {
    switch (qtype) {
    case RKE_F32: return 4 * n;
    case RKE_F16:
    case RKE_BF16: return 2 * n;
    case RKE_Q4_0: return n / QK * 18;
    case RKE_Q4_1: return n / QK * 20;
    case RKE_Q5_0: return n / QK * 22;
    case RKE_Q5_1: return n / QK * 24;
    case RKE_Q8_0: return n / QK * 34;
    case RKE_IQ4_NL: return n / QK * 18;
    default: return 0;
    }
}

int rke_embedding_supported(int qtype) { return rke_row_bytes(qtype, QK) > 0; }

int rke_dequantize_row(int qtype, const void *row, float *y, int64_t n) {
    const uint8_t *p = row;
    switch (qtype) {
    case RKE_F32:
        memcpy(y, p, (size_t)n * sizeof(float));
        return 1;
    case RKE_F16:
        for (int64_t i = 0; i < n; i++) y[i] = rke_fp16_to_f32(u16_at(p + 2 * i));
        return 1;
    case RKE_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = rke_bf16_to_f32(u16_at(p + 2 * i));
        return 1;
    default:
        break;
    }
    const int64_t block_bytes = rke_row_bytes(qtype, QK);
    if (!block_bytes) return 0;
    for (int64_t b = 0; b < n / QK; b++, p += block_bytes, y += QK) {
        const float d = rke_fp16_to_f32(u16_at(p));
        switch (qtype) {
        case RKE_Q4_0:
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((p[2 + j] & 0x0F) - 8) * d;
                y[j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
            }
            break;
        case RKE_Q4_1: {
            const float m = rke_fp16_to_f32(u16_at(p + 2));
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(p[4 + j] & 0x0F) * d + m;
                y[j + 16] = (float)(p[4 + j] >> 4) * d + m;
            }
            break;
        }
        case RKE_Q5_0: {
            const uint32_t qh = u32_at(p + 2);
            for (int j = 0; j < 16; j++) {
                const int lo = (p[6 + j] & 0x0F) | (int)((qh >> j) & 1u) << 4;
                const int hi = (p[6 + j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
                y[j] = (float)(lo - 16) * d;
                y[j + 16] = (float)(hi - 16) * d;
            }
            break;
        }
        case RKE_Q5_1: {
            const float m = rke_fp16_to_f32(u16_at(p + 2));
            const uint32_t qh = u32_at(p + 4);
            for (int j = 0; j < 16; j++) {
                const int lo = (p[8 + j] & 0x0F) | (int)((qh >> j) & 1u) << 4;
                const int hi = (p[8 + j] >> 4) | (int)((qh >> (j + 16)) & 1u) << 4;
                y[j] = (float)lo * d + m;
                y[j + 16] = (float)hi * d + m;
            }
            break;
        }
        case RKE_Q8_0:
            for (int j = 0; j < 32; j++) y[j] = (float)(int8_t)p[2 + j] * d;
            break;
        case RKE_IQ4_NL:
            for (int j = 0; j < 16; j++) {
                y[j] = (float)IQ4_NL_VALUES[p[2 + j] & 0x0F] * d;
                y[j + 16] = (float)IQ4_NL_VALUES[p[2 + j] >> 4] * d;
            }
            break;
        default:
            return 0;
        }
    }
    return 1;
}
