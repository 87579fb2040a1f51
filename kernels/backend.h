// kernels/backend.h: the one compute interface of ferry. engine/ computes only through it:
// a backend is a table of function pointers plus an implementation context, with memory
// (device memory for CUDA, the host heap for CPU), asynchronous copies, streams, events,
// graph capture, and the forward-pass ops. Backends:
//   "cpu"  the fast CPU kernels of kernels/cpu/ (SIMD, the numa/ pool, quantized activations
//          on the fast path), every op complete before it returns;
//   "ref"  the scalar CPU references of kernels/cpu/ (ops.h, deltanet.h, matmul's exact
//          path), single-threaded: what every other backend is tested against
//          (tests/gpu/op_table.h); never used by the engine;
//   "cuda" the kernels of kernels/cuda/ (compiled with FERRY_HAVE_CUDA);
//   "sim"  the "cpu" kernels standing in for a GPU: separate "device" memory with its own
//          total (FERRY_SIM_VRAM), copies on copy threads paced at FERRY_SIM_PCIE_GBPS,
//          events; so every device path runs in CI (backend_cpu.c has the details).
//
// Conventions:
// - Pointers given to ops are backend memory (from ops.mem_alloc) unless a comment says
//   host. On CPU backends backend memory is host memory.
// - Ops are asynchronous on the given stream (CUDA) or complete before returning (CPU); a
//   NULL stream is the default stream. They return 0 or a negative errno-style code with
//   a message (ferry_fail): -EINVAL for arguments the op cannot handle (including shapes
//   beyond the limits given to reserve), -EIO for a device error.
// - Positions: ops that depend on the sequence position (rope_neox, kv_store, attn) read it
//   from `pos`, one int32 in backend memory holding the position of the chunk's first
//   token, so a captured decode graph can be replayed at every position.
// - Precision: ops that take an `enum ferry_prec` compute exactly what the equations say
//   in F32 (FERRY_PREC_EXACT: F32 activations times exactly dequantized weights, the
//   scalar-reference attention) or let the backend choose its fast numerics
//   (FERRY_PREC_FAST: the CPU quantizes activations to each weight type's vec-dot format
//   as llama.cpp's CPU backend does; CUDA dequantizes weights in registers against F32
//   activations, or to F16 tiles for cuBLAS GEMMs).
// - Scratch: a backend allocates its internal workspaces once, in reserve(), for the
//   largest shapes the caller declares (struct ferry_limits); no op allocates afterwards.
//   ferry_backend_scratch_bytes gives the same number without a device, for the plan.
// - Threads: a backend is used by one thread at a time; run the ops of one backend on one
//   stream at a time (the scratch is shared).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/types.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ferry_pool;
struct ferry_backend;
struct ferry_stream; // opaque: cudaStream_t on CUDA, a dummy handle on CPU
struct ferry_event;  // opaque: cudaEvent_t on CUDA, a dummy handle on CPU
struct ferry_graph;  // opaque: cudaGraphExec_t on CUDA; CPU backends cannot capture

enum ferry_backend_kind { FERRY_BACKEND_CPU = 0, FERRY_BACKEND_CUDA = 1, FERRY_BACKEND_SIM = 2 };
enum ferry_prec { FERRY_PREC_FAST = 0, FERRY_PREC_EXACT = 1 };

// Every compute op, as X(ENUM_SUFFIX, ops_field). tests/gpu/op_table.h must hold at least
// one case per op (tests/unit/test_ops_table.c fails otherwise).
#define FERRY_OP_LIST(X)            \
  X(DEQUANT, dequant)               \
  X(EMBED, embed)                   \
  X(MATVEC, matvec)                 \
  X(MATMUL, matmul)                 \
  X(MATMUL_GROUPED, matmul_grouped) \
  X(MOE_FFN, moe_ffn)               \
  X(MOE_FFN_IDS, moe_ffn_ids)       \
  X(MOE_COMBINE, moe_combine)       \
  X(RMSNORM, rmsnorm)               \
  X(ROPE_NEOX, rope_neox)           \
  X(KV_STORE, kv_store)             \
  X(ATTN, attn)                     \
  X(SWIGLU, swiglu)                 \
  X(ROUTER_TOPK, router_topk)       \
  X(ADD, add)                       \
  X(SCALE, scale)                   \
  X(AXPY, axpy)                     \
  X(SIGMOID_MUL, sigmoid_mul)       \
  X(GATE_ADD_ROWS, gate_add_rows)   \
  X(COPY2D, copy2d)                 \
  X(SSM_CONV, ssm_conv)             \
  X(L2NORM_HEADS, l2norm_heads)     \
  X(DELTA_GATES, delta_gates)       \
  X(DELTA_RULE, delta_rule)         \
  X(GATED_RMSNORM, gated_rmsnorm)   \
  X(SSM_IN_REGROUP, ssm_in_regroup) \
  X(SSM_BA_REGROUP, ssm_ba_regroup)

enum ferry_op {
#define FERRY_OP_ENUM_(E, f) FERRY_OP_##E,
  FERRY_OP_LIST(FERRY_OP_ENUM_)
#undef FERRY_OP_ENUM_
      FERRY_OP_COUNT
};

// The largest shapes a forward pass will hand the ops; reserve() sizes the backend's
// scratch from them. A field left 0 means the op family is not used (e.g. no routed
// experts, no DeltaNet layers).
struct ferry_limits {
  int n_threads;         // CPU workers the backend's pool may use (0: the pool's size)
  int64_t max_tok;       // tokens per forward call (the prefill chunk)
  int64_t max_in;        // longest matmul input row (elements)
  uint64_t weight_types; // bit t set for every weight type (enum ferry_type) of the matmuls
                         // and experts (the CPU sizes its quantized activations by them)
  // attention (attn)
  int64_t n_ctx, n_head, n_kv_head, head_dim;
  // routed experts (moe_ffn, moe_ffn_ids): model width, expert hidden width, experts per
  // token, experts per layer; moe pairs = max_tok * moe_k
  int64_t moe_d, moe_ff, moe_k, moe_n_expert;
  // Gated DeltaNet (delta_rule): k-heads, v-heads, key and value head dims
  int64_t dn_hk, dn_hv, dn_dk, dn_dv;
};

// The weights of one routed expert, backend memory: gate and up are ff rows of d elements,
// down is d rows of ff elements, rows contiguous.
struct ferry_moe_shape {
  enum ferry_type t_gate, t_up, t_down;
  int64_t d, ff;
};
// One group of moe_ffn: an expert and the grouped rows [off, off + cnt) it computes.
// Host memory; w[] are backend memory.
struct ferry_moe_group {
  const void *w[3]; // gate, up, down
  int32_t off, cnt;
};
// Every expert of a layer resident in backend memory: expert e's matrix p (0 gate, 1 up,
// 2 down) starts at base[p] + e * stride[p] (bytes).
struct ferry_moe_table {
  const void *base[3];
  uint64_t stride[3];
  int64_t n_expert;
};

// Shorthands for the table below only (undefined after it).
#define be_t     struct ferry_backend
#define stream_t struct ferry_stream

struct ferry_backend_ops {
  // ---- memory ----
  int (*mem_alloc)(be_t *be, void **out, size_t bytes); // -ENOMEM with a message on failure
  void (*mem_free)(be_t *be, void *p);                  // NULL-safe
  // Copies between host memory and backend memory, ordered on stream s. For CUDA the
  // host side should be pinned for the copy to be asynchronous (and to be captured in a
  // graph: a captured copy reads / writes the host memory when the graph runs).
  int (*copy_h2d)(be_t *be, void *dst, const void *h_src, size_t bytes, stream_t *s);
  int (*copy_d2h)(be_t *be, void *h_dst, const void *src, size_t bytes, stream_t *s);
  int (*copy_d2d)(be_t *be, void *dst, const void *src, size_t bytes, stream_t *s);
  int (*memset0)(be_t *be, void *dst, size_t bytes, stream_t *s);
  // Host memory the device can copy from asynchronously: pinned (cudaHostAlloc) on CUDA,
  // 64-byte aligned heap on CPU. host_register pins memory allocated elsewhere (e.g.
  // NUMA-local expert slots) until host_unregister; a no-op on CPU.
  int (*host_alloc)(be_t *be, void **out, size_t bytes);
  void (*host_free)(be_t *be, void *p); // NULL-safe
  int (*host_register)(be_t *be, void *p, size_t bytes);
  int (*host_unregister)(be_t *be, void *p);
  // Free and total backend memory in bytes (CPU: MemAvailable and 0 = unknown total).
  int (*mem_info)(be_t *be, size_t *free_bytes, size_t *total_bytes);
  // Allocates the backend's scratch for shapes up to *lim (once; a second call with larger
  // limits grows it, with no op in flight). Blocks. -ENOMEM with a message on failure.
  int (*reserve)(be_t *be, const struct ferry_limits *lim);
  // ---- streams, events, graphs ----
  int (*stream_create)(be_t *be, stream_t **out);
  void (*stream_destroy)(be_t *be, stream_t *s); // NULL-safe
  int (*stream_sync)(be_t *be, stream_t *s);     // blocks until s is idle
  int (*event_create)(be_t *be, struct ferry_event **out);
  void (*event_destroy)(be_t *be, struct ferry_event *ev); // NULL-safe
  int (*event_record)(be_t *be, struct ferry_event *ev, stream_t *s);
  int (*stream_wait_event)(be_t *be, stream_t *s, struct ferry_event *ev); // no host block
  int (*event_sync)(be_t *be, struct ferry_event *ev);                     // blocks
  // Milliseconds between two recorded, completed events (-1 on CPU: no timing).
  float (*event_elapsed_ms)(be_t *be, struct ferry_event *start, struct ferry_event *end);
  // Graph capture: between graph_begin and graph_end every op and copy issued on s is
  // recorded instead of run (s must not be NULL); graph_end instantiates the recording;
  // graph_launch replays it on s with the same pointers and scalar arguments (values in
  // backend memory, such as `pos`, are read when it runs). graph_begin returns -ENOTSUP
  // on backends that cannot capture (CPU): run the ops directly instead. An op that
  // cannot be captured (one that waits for the host) fails with -EINVAL during capture.
  int (*graph_begin)(be_t *be, stream_t *s);
  int (*graph_end)(be_t *be, stream_t *s, struct ferry_graph **out);
  int (*graph_launch)(be_t *be, struct ferry_graph *g, stream_t *s);
  void (*graph_destroy)(be_t *be, struct ferry_graph *g); // NULL-safe

  // ---- compute ops ----
  // dst[0..n) = dequantised src (n a multiple of the block size). Reference:
  // cpu_dequant_row.
  int (*dequant)(be_t *be, enum ferry_type t, const void *src, float *dst, int64_t n, stream_t *s);
  // Embedding rows: out[i][0..d) = dequantised row ids[i] of the table (rows of d elements
  // of type t, row_bytes apart), for i < n; ids int32 in backend memory, each in
  // [0, n_rows) (not checked on the device).
  int (*embed)(be_t *be, enum ferry_type t, const void *table, uint64_t row_bytes,
               const int32_t *ids, int64_t n, int64_t d, float *out, stream_t *s);
  // y[r] = W[r] . x, W nrows x n of type t, x F32, exact. Reference: cpu_matvec_exact.
  int (*matvec)(be_t *be, enum ferry_type t, const void *w, int64_t nrows, int64_t n,
                const float *x, float *y, stream_t *s);
  // Y[i][r] = W[r] . X[i] for i < m (X row stride ldx, Y row stride ldy, in floats), with
  // prec's numerics. Reference: cpu_matmul_exact; the CPU fast path quantizes X rows to
  // cpu_vec_dot_type(t) and runs cpu_matmul.
  int (*matmul)(be_t *be, enum ferry_prec prec, enum ferry_type t, const void *w, int64_t nrows,
                int64_t n, const float *x, int64_t ldx, int64_t m, float *y, int64_t ldy,
                stream_t *s);
  // Grouped-expert product, exact: w (host array of n_group backend pointers) and offs
  // (host array of n_group+1) are host memory; rows (offs[n_group] indices into X) is
  // backend memory. Reference: cpu_matmul_grouped.
  int (*matmul_grouped)(be_t *be, enum ferry_type t, const void *const *w, int64_t n_group,
                        int64_t nrows, int64_t n, const float *x, int64_t ldx, const int32_t *rows,
                        const int64_t *offs, float *y, int64_t ldy, stream_t *s);
  // Routed-expert FFN over grouped rows: for each group g (host array of n_group) and each
  // grouped row r in [g.off, g.off + g.cnt):
  //   y[r][0..d) = down_g . swiglu(gate_g . x[rows[r]], up_g . x[rows[r]])
  // x [n_tok][d] token inputs; rows [>= max(off + cnt)] token index of each grouped row
  // (backend memory); y [rows][d]. x_changed tells the backend that x differs from the
  // previous moe_ffn call's (so it re-prepares its activations, e.g. quantizes each token
  // once per layer on the CPU); several calls with disjoint groups may follow one
  // x_changed call (stream mode computes experts as they land). Each output row is
  // computed the same way whatever the grouping, so results do not depend on which
  // groups go together. Reference: three exact products and cpu_swiglu per group.
  int (*moe_ffn)(be_t *be, enum ferry_prec prec, const struct ferry_moe_shape *sh, const float *x,
                 int64_t n_tok, bool x_changed, const int32_t *rows, int n_group,
                 const struct ferry_moe_group *g, float *y, stream_t *s);
  // The same for experts chosen on the backend: pair p = t*k + j (token t, slot j) uses
  // expert ids[p] (backend memory, [n_tok][k], each in [0, tab->n_expert)) from the
  // resident table. Its output row is y[map[p]][0..d): the op writes map [n_tok*k]
  // (backend memory; a permutation of 0..n_tok*k-1, e.g. the identity, or the rows grouped
  // by expert), for moe_combine. Backends compute decode (n_tok*k small) without waiting
  // for the host, so it can be captured in a graph; larger calls may read the ids back to
  // group them. Each pair's output equals moe_ffn's for the same expert and token, bit for
  // bit on the same backend.
  int (*moe_ffn_ids)(be_t *be, enum ferry_prec prec, const struct ferry_moe_shape *sh,
                     const struct ferry_moe_table *tab, const float *x, int64_t n_tok, int64_t k,
                     const int32_t *ids, float *y, int32_t *map, stream_t *s);
  // Router-order sum: y[t][0..d) = sum over j = 0..k-1, in that order, of
  // w[t*k + j] * slots[map ? map[t*k + j] : t*k + j][0..d), starting from zero. y must
  // not overlap slots. map (backend memory) may be NULL.
  int (*moe_combine)(be_t *be, float *y, const float *slots, const int32_t *map, const float *w,
                     int64_t n_tok, int64_t k, int64_t d, stream_t *s);
  // cpu_rmsnorm_rows (also the per-head QK-norm: nrows = tokens*heads, n = head_dim).
  // y may == x.
  int (*rmsnorm)(be_t *be, float *y, const float *x, const float *w, int64_t nrows, int64_t n,
                 float eps, stream_t *s);
  // cpu_rope_neox_rows in place at positions *pos + t (partial rotary when n_rot < head_dim).
  int (*rope_neox)(be_t *be, float *x, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                   int64_t n_rot, const int32_t *pos, float freq_base, stream_t *s);
  // cpu_kv_store at positions *pos + t.
  int (*kv_store)(be_t *be, void *cache, enum ferry_type kv_type, int64_t kv_row_stride_elems,
                  const int32_t *pos, int64_t n_tok, const float *src, int64_t n_elems,
                  stream_t *s);
  // Causal attention: n_tok queries (row t at q + t*n_head*head_dim) at positions *pos + t;
  // query t attends to cached positions 0..*pos+t (already stored). out has q's layout.
  // Exact: the scalar reference (cpu_attn_prefill; cpu_attn_decode for one token); fast:
  // the backend's kernels (F32 softmax). Contexts up to the reserved n_ctx.
  int (*attn)(be_t *be, enum ferry_prec prec, float *out, const float *q, const void *kcache,
              const void *vcache, enum ferry_type kv_type, int64_t n_tok, const int32_t *pos,
              int64_t n_head, int64_t n_kv_head, int64_t head_dim, int64_t kv_row_stride_elems,
              float scale, stream_t *s);
  // cpu_swiglu.
  int (*swiglu)(be_t *be, float *y, const float *g, const float *u, int64_t n, stream_t *s);
  // cpu_router_topk_rows (ids int32).
  int (*router_topk)(be_t *be, const float *logits, int64_t n_tok, int64_t n_expert, int64_t k,
                     int *ids, float *weights, stream_t *s);
  // cpu_add, cpu_scale, cpu_axpy, cpu_sigmoid_mul.
  int (*add)(be_t *be, float *y, const float *a, const float *b, int64_t n, stream_t *s);
  int (*scale)(be_t *be, float *y, const float *x, float sc, int64_t n, stream_t *s);
  int (*axpy)(be_t *be, float *y, const float *x, float sc, int64_t n, stream_t *s);
  int (*sigmoid_mul)(be_t *be, float *y, const float *x, const float *g, int64_t n, stream_t *s);
  // Shared-expert gate (Qwen3-Next): y[t][i] += sigmoid(g[t]) * x[t][i] for t < n_rows,
  // i < d, with sigmoid(v) = 1 / (1 + exp(-v)) in F32.
  int (*gate_add_rows)(be_t *be, float *y, const float *x, const float *g, int64_t n_rows,
                       int64_t d, stream_t *s);
  // Strided copy of floats: dst[r*ldd + c] = src[r*lds + c] for r < nrows, c < ncols
  // (e.g. splitting Qwen3-Next's per-head [query | gate] rows). No overlap.
  int (*copy2d)(be_t *be, float *dst, int64_t ldd, const float *src, int64_t lds, int64_t nrows,
                int64_t ncols, stream_t *s);
  // ---- Gated DeltaNet (kernels/cpu/deltanet.h has the exact contracts) ----
  // cpu_ssm_conv_rows: T tokens of the causal depthwise conv, state updated (T = 1 is the
  // decode step). y [T][C] must not overlap u.
  int (*ssm_conv)(be_t *be, float *y, float *state, const float *u, const float *w, int64_t T,
                  int64_t C, int64_t K, int apply_silu, stream_t *s);
  // cpu_l2norm_heads on the n_heads heads of d at x + t*ld for t < T, in place.
  int (*l2norm_heads)(be_t *be, float *x, int64_t ld, int64_t T, int64_t n_heads, int64_t d,
                      float eps, float scale, stream_t *s);
  // cpu_delta_gates without decay: beta, g [T][Hv].
  int (*delta_gates)(be_t *be, float *beta, float *g, const float *b, const float *a,
                     const float *ssm_a, const float *dt_bias, int64_t T, int64_t Hv, stream_t *s);
  // The delta-rule recurrence over T tokens from the log-decays g (cpu_delta_prefill's
  // arguments): the backend picks the exact recurrence or the chunked form (equal up to
  // rounding); S [Hv][dk][dv] updated in place.
  int (*delta_rule)(be_t *be, float *o, int64_t ldo, float *S, const float *q, int64_t ldq,
                    const float *k, int64_t ldk, const float *v, int64_t ldv, const float *beta,
                    const float *g, int64_t T, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv,
                    stream_t *s);
  // cpu_gated_rmsnorm_heads over n_heads heads of d (n_heads may be T*Hv).
  int (*gated_rmsnorm)(be_t *be, float *y, const float *o, const float *z, const float *w,
                       int64_t n_heads, int64_t d, float eps, stream_t *s);
  // cpu_ssm_in_regroup / cpu_ssm_ba_regroup (legacy fused projections -> split layout).
  int (*ssm_in_regroup)(be_t *be, float *qkv, float *z, const float *p, int64_t T, int64_t nk,
                        int64_t nv, int64_t dk, int64_t dv, stream_t *s);
  int (*ssm_ba_regroup)(be_t *be, float *b, float *a, const float *p, int64_t T, int64_t nk,
                        int64_t nv, stream_t *s);
};

// Read-only after creation (except the scratch that reserve fills in impl).
struct ferry_backend {
  const char *name; // "cpu", "ref", "sim" or "cuda"
  enum ferry_backend_kind kind;
  struct ferry_backend_ops ops;
  uint32_t kv_types; // KV cache types kv_store and attn take: bit 1u << enum ferry_type
  void *impl;        // private
};

#undef be_t
#undef stream_t

// Creates a backend: name "cpu", "ref", "sim", "cuda" or "auto" (cuda when built with CUDA and a
// device is present, else cpu). pool (may be NULL) runs the CPU kernels; it is borrowed.
// Returns 0, -ENODEV when "cuda" is asked for but not built or no device is present,
// -EINVAL for an unknown name.
int ferry_backend_create(struct ferry_backend **out, const char *name, struct ferry_pool *pool,
                         int device);
void ferry_backend_destroy(struct ferry_backend *be); // NULL-safe
// The pool a CPU backend runs on (NULL for others or when created without one).
struct ferry_pool *ferry_backend_pool(const struct ferry_backend *be);
// Bytes reserve() allocates for these limits on a backend of this kind (no device needed),
// and what this backend has reserved so far.
uint64_t ferry_backend_scratch_bytes(enum ferry_backend_kind kind, const struct ferry_limits *lim);
uint64_t ferry_backend_reserved(const struct ferry_backend *be);
// "NVIDIA H200 (sm_90, 139.8 GiB)" or "CPU: 2 cores" into buf.
void ferry_backend_describe(const struct ferry_backend *be, char *buf, size_t n);

// The static op table of a backend kind, without creating it (no device needed); NULL
// when the kind is not built in. Used by tests to check that every op is implemented.
const struct ferry_backend_ops *ferry_backend_ops_of(enum ferry_backend_kind kind);
// Whether ops->(field of op) is set.
bool ferry_backend_has_op(const struct ferry_backend_ops *ops, enum ferry_op op);
// "matvec", "rope_neox", ... (NULL for an out-of-range op).
const char *ferry_op_name(enum ferry_op op);
// Number of CUDA devices usable now (0 without CUDA support, driver or device).
int ferry_backend_cuda_devices(void);

#ifdef __cplusplus
}
#endif
