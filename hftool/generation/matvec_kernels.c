/* One-row products y = W x (+ b) that add in the order of the kernels PyTorch itself uses for them, made faster.
 * hftool checks every matrix it uses them for against the plain product, bit for bit, before using them
 * (hftool/generation/matvec.py): on a machine where the plain product sums differently they are not used.
 *
 * float32: MKL's one-row kernel on AMD CPUs. With p_k = W[r, k] * x[k] (each rounded to float32; no fused
 * multiply-add) and a the offset of the row's start from a 16-byte boundary in floats, MKL's 4-lane SSE kernel
 * sums the first 4 - a products in turn into lane 0, then lane q (q = 0..3) adds p_k for the following k with
 * k - (4 - a) = q mod 4 in turn, combines the lanes as (l0 + l2) + (l1 + l3), adds the products left over at the
 * end in turn, and adds the bias last. That holds for rows in groups of four; MKL multiplies the last rows % 4
 * rows with another kernel, and hftool leaves them to MKL. MKL runs this on one core at about 16 GB/s. This
 * kernel makes the very same additions, so it gives the same bits, but keeps eight rows in flight, prefetches
 * ahead, and splits the rows over the threads of PyTorch's own OpenMP runtime.
 *
 * Eight rows read side by side are eight memory streams, which the hardware prefetcher serves much worse than
 * the one stream of a plain read (measured on a 2-core EPYC: 16 against 25 GB/s on one core). So while a block
 * of rows is multiplied, the memory after it is prefetched into L2 in address order, twice as fast as the block
 * is read: the next block is in cache before it is needed. Over BLOOM-560m's weights this took the kernel from
 * about 0.8 to about 0.97 of the bandwidth of reading each matrix with a plain sum.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>

#define ROWS_IN_FLIGHT 8
/* Bytes of a block read per step of 4 inputs: ROWS_IN_FLIGHT rows x 4 floats; prefetched twice as fast. */
#define PREFETCH_BYTES_PER_STEP (2 * ROWS_IN_FLIGHT * 4 * (int64_t)sizeof(float))

static inline __m128 start(const float *w, const float *x, int64_t head) {
    float sum = w[0] * x[0];
    for (int64_t k = 1; k < head; k++) sum = sum + w[k] * x[k];
    return _mm_set_ps(0.0f, 0.0f, 0.0f, sum);
}

static inline float finish(__m128 lanes, const float *w, const float *x, int64_t from, int64_t inputs) {
    float l[4];
    _mm_storeu_ps(l, lanes);
    float sum = (l[0] + l[2]) + (l[1] + l[3]);
    for (int64_t k = from; k < inputs; k++) sum = sum + w[k] * x[k];
    return sum;
}

/* y[r] = sum_k W[r * row_stride + k] * x[k] (+ bias[r]) for r < rows; row_stride is a multiple of 4 (every row
 * starts at the same offset from a 16-byte boundary) and inputs is at least 8. */
void hftool_matvec_f32(const float *W, int64_t row_stride, const float *x, const float *bias, float *y,
                       int64_t rows, int64_t inputs) {
    int64_t head = 4 - (int64_t)(((uintptr_t)W / sizeof(float)) % 4);
    int64_t end = head + (inputs - head) / 4 * 4;
    int64_t blocks = (rows + ROWS_IN_FLIGHT - 1) / ROWS_IN_FLIGHT;
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {
        int64_t first = block * ROWS_IN_FLIGHT;
        int64_t count = rows - first < ROWS_IN_FLIGHT ? rows - first : ROWS_IN_FLIGHT;
        const float *w = W + first * row_stride;
        __m128 lanes[ROWS_IN_FLIGHT];
        if (count == ROWS_IN_FLIGHT) {
            uintptr_t next_block = (uintptr_t)(w + ROWS_IN_FLIGHT * row_stride);
            for (int r = 0; r < ROWS_IN_FLIGHT; r++) lanes[r] = start(w + r * row_stride, x, head);
            for (int64_t k = head; k < end; k += 4) {
                uintptr_t ahead = next_block + (uintptr_t)((k - head) / 4 * PREFETCH_BYTES_PER_STEP);
                for (int line = 0; line < PREFETCH_BYTES_PER_STEP; line += 64)
                    _mm_prefetch((const char *)(ahead + line), _MM_HINT_T2);
                __m128 xk = _mm_loadu_ps(x + k);
                for (int r = 0; r < ROWS_IN_FLIGHT; r++)
                    lanes[r] = _mm_add_ps(lanes[r], _mm_mul_ps(_mm_loadu_ps(w + r * row_stride + k), xk));
            }
        } else {
            for (int r = 0; r < count; r++) {
                lanes[r] = start(w + r * row_stride, x, head);
                for (int64_t k = head; k < end; k += 4)
                    lanes[r] = _mm_add_ps(lanes[r], _mm_mul_ps(_mm_loadu_ps(w + r * row_stride + k),
                                                               _mm_loadu_ps(x + k)));
            }
        }
        for (int r = 0; r < count; r++) {
            float sum = finish(lanes[r], w + r * row_stride, x, end, inputs);
            y[first + r] = bias ? sum + bias[first + r] : sum;
        }
    }
}

/* float32, GPT-2's Conv1D layout (y = b + x W, W stored inputs x outputs): MKL's kernel starts each output from
 * its bias (or zero) and adds W[k, j] * x[k] (rounded, no fused multiply-add) for k = 0, 1, ... in turn, on any
 * alignment. Here each thread takes a contiguous range of outputs and adds eight rows at a time to sixteen
 * outputs held in registers: one pass over y per eight rows instead of one per row. Measured against the
 * batched split (hftool/generation/matvec.py): 12 against 37 us for a 256 x 768 matrix in cache, 280 against 320 us for 768 x 2,304 from
 * memory. */
#define INPUTS_PER_PASS 8

void hftool_matvec_f32_columns(const float *W, int64_t row_stride, const float *x, const float *bias, float *y,
                               int64_t inputs, int64_t outputs) {
#pragma omp parallel
    {
        int64_t thread = omp_get_thread_num(), threads = omp_get_num_threads();
        int64_t begin = outputs * thread / threads / 16 * 16;
        int64_t end = thread == threads - 1 ? outputs : outputs * (thread + 1) / threads / 16 * 16;
        int64_t vector_end = begin + (end - begin) / 16 * 16;
        for (int64_t j = begin; j < end; j++) y[j] = bias ? bias[j] : 0.0f;
        int64_t k0 = 0;
        for (; k0 + INPUTS_PER_PASS <= inputs; k0 += INPUTS_PER_PASS) {
            __m128 xk[INPUTS_PER_PASS];
            for (int k = 0; k < INPUTS_PER_PASS; k++) xk[k] = _mm_set1_ps(x[k0 + k]);
            for (int64_t j = begin; j < vector_end; j += 16) {
                __m128 y0 = _mm_loadu_ps(y + j), y1 = _mm_loadu_ps(y + j + 4);
                __m128 y2 = _mm_loadu_ps(y + j + 8), y3 = _mm_loadu_ps(y + j + 12);
                for (int k = 0; k < INPUTS_PER_PASS; k++) {
                    const float *w = W + (k0 + k) * row_stride + j;
                    y0 = _mm_add_ps(y0, _mm_mul_ps(_mm_loadu_ps(w), xk[k]));
                    y1 = _mm_add_ps(y1, _mm_mul_ps(_mm_loadu_ps(w + 4), xk[k]));
                    y2 = _mm_add_ps(y2, _mm_mul_ps(_mm_loadu_ps(w + 8), xk[k]));
                    y3 = _mm_add_ps(y3, _mm_mul_ps(_mm_loadu_ps(w + 12), xk[k]));
                }
                _mm_storeu_ps(y + j, y0);
                _mm_storeu_ps(y + j + 4, y1);
                _mm_storeu_ps(y + j + 8, y2);
                _mm_storeu_ps(y + j + 12, y3);
            }
            for (int64_t j = vector_end; j < end; j++)
                for (int k = 0; k < INPUTS_PER_PASS; k++) y[j] = y[j] + W[(k0 + k) * row_stride + j] * x[k0 + k];
        }
        for (; k0 < inputs; k0++)
            for (int64_t j = begin; j < end; j++) y[j] = y[j] + W[k0 * row_stride + j] * x[k0];
    }
}

/* bfloat16: ATen's matrix-vector kernel with float32 arithmetic (the one F.linear runs with oneDNN off), in the
 * AVX2 build that ATen dispatched on the AVX-512 EPYC this was read on: eight 8-lane float32 accumulators, accumulator a lane l taking the fused
 * multiply-add of elements 64i + 8a + l for i = 0, 1, ... in turn; then a[i] += a[i + 4], a[i] += a[i + 2],
 * a[0] += a[1]; then the lanes as l ^ 4, l ^ 2, l ^ 1; rounded to bfloat16 (to nearest even), or, with a bias,
 * rounded once after adding it. Only for inputs a multiple of 64 (ATen sums a remainder in other ways). The same
 * additions, compiled here, read the weights at 0.96 of a plain read's bandwidth against ATen's 0.84 (measured
 * over BLOOM-560m's matrices, in one process, alternating). */
#define AVX2 __attribute__((target("avx2,fma")))

int hftool_has_avx2_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

static inline uint16_t round_to_bf16(float value) {
    uint32_t bits;
    __builtin_memcpy(&bits, &value, sizeof bits);
    if (value != value) return 0x7FC0;
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static inline float bf16_to_float(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    __builtin_memcpy(&result, &bits, sizeof result);
    return result;
}

AVX2 static inline __m256 load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

AVX2 static inline float dot_bf16(const uint16_t *x, const uint16_t *w, int64_t inputs) {
    __m256 acc[8];
    for (int a = 0; a < 8; a++) acc[a] = _mm256_setzero_ps();
    for (int64_t i = 0; i < inputs; i += 64)
        for (int a = 0; a < 8; a++)
            acc[a] = _mm256_fmadd_ps(load_bf16(x + i + 8 * a), load_bf16(w + i + 8 * a), acc[a]);
    for (int a = 0; a < 4; a++) acc[a] = _mm256_add_ps(acc[a], acc[a + 4]);
    for (int a = 0; a < 2; a++) acc[a] = _mm256_add_ps(acc[a], acc[a + 2]);
    __m256 v = _mm256_add_ps(acc[0], acc[1]);
    v = _mm256_add_ps(v, _mm256_permute2f128_ps(v, v, 0x1));
    v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0x4E));
    v = _mm256_add_ps(v, _mm256_shuffle_ps(v, v, 0xB1));
    return _mm256_cvtss_f32(v);
}

/* y[r] = sum_k W[r * row_stride + k] * x[k] (+ bias[r]) in bfloat16 for r < rows; inputs is a multiple of 64.
 * Call only where hftool_has_avx2_fma() says so. */
AVX2 void hftool_matvec_bf16(const uint16_t *W, int64_t row_stride, const uint16_t *x, const uint16_t *bias,
                             uint16_t *y, int64_t rows, int64_t inputs) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        float sum = dot_bf16(x, W + r * row_stride, inputs);
        y[r] = round_to_bf16(bias ? bf16_to_float(bias[r]) + sum : sum);
    }
}
