// tests/unit/test_synth.c: `ferry synth --exact-quant` really quantizes every row. The same
// model is written three times (seed, dims and names equal): F32, Q4_K_M with the block
// bank (the default for big K-quant tensors) and Q4_K_M with exact quantization. Each row
// of a tensor is drawn from its own stream, so the F32 file holds the values the exact file
// must have quantized: per large Q4_K/Q6_K tensor the exact file's dequantized rows are
// within K-quant error of the F32 rows (rel. RMS < 0.15), while the bank's are not
// (unrelated blocks of the same law: rel. RMS ~1.4). A --exact-quant that does nothing
// fails the first check.
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../check.h"
#include "base/base.h"
#include "engine/gguf.h"
#include "engine/synth.h"
#include "kernels/cpu/quants.h"
#include "kernels/types.h"

static float *tensor_f32(const struct gguf_file *f, const struct gguf_tensor *t) {
  uint64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
  uint8_t *raw = malloc(t->nbytes);
  float *y = malloc(nel * sizeof(float));
  CHECK_EQ(gguf_pread(f, raw, t->nbytes, t->abs_offset), 0);
  cpu_dequant_row((enum ferry_type)t->type, raw, y, (int64_t)nel);
  free(raw);
  return y;
}

static double rel_rms(const float *ref, const float *x, uint64_t n) {
  double e = 0, s = 0;
  for (uint64_t i = 0; i < n; i++)
    e += (double)(x[i] - ref[i]) * (x[i] - ref[i]), s += (double)ref[i] * ref[i];
  return sqrt(e / s);
}

int main(void) {
  char dir[] = "/tmp/ferry_synth_XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char pf[256], pb[256], pe[256];
  snprintf(pf, sizeof pf, "%s/f32.gguf", dir);
  snprintf(pb, sizeof pb, "%s/bank.gguf", dir);
  snprintf(pe, sizeof pe, "%s/exact.gguf", dir);
  struct synth_params p;
  synth_params_default(&p, SYNTH_QWEN3MOE);
  // K-quant-sized rows (multiples of 256) and expert tensors of 256x256x16 = 4096 blocks:
  // big enough for the bank
  p.n_layer = 2, p.n_embd = 256, p.n_ff = 512, p.n_head = 8, p.n_head_kv = 2, p.head_dim = 32;
  p.n_rot = 32, p.n_expert = 16, p.n_expert_used = 4, p.n_ff_exp = 256, p.n_threads = 2;
  CHECK_EQ(synth_params_validate(&p), 0);
  p.recipe = SYNTH_F32;
  CHECK_EQ(synth_write(&p, pf, NULL), 0);
  p.recipe = SYNTH_Q4_K_M;
  CHECK_EQ(synth_write(&p, pb, NULL), 0);
  p.exact = true;
  CHECK_EQ(synth_write(&p, pe, NULL), 0);

  struct gguf_file *ff = NULL, *fb = NULL, *fe = NULL;
  CHECK_EQ(gguf_open(&ff, pf), 0);
  CHECK_EQ(gguf_open(&fb, pb), 0);
  CHECK_EQ(gguf_open(&fe, pe), 0);
  int checked = 0;
  for (int64_t i = 0; ff && fb && fe && i < gguf_n_tensors(fe); i++) {
    const struct gguf_tensor *te = gguf_tensor_at(fe, i);
    if (te->type != FT_Q4_K && te->type != FT_Q6_K) continue;
    uint64_t nel = te->ne[0] * te->ne[1] * te->ne[2] * te->ne[3];
    if (nel / 256 < 4096) continue; // small tensors are quantized row by row either way
    const struct gguf_tensor *tf = gguf_find_tensor(ff, te->name),
                             *tb = gguf_find_tensor(fb, te->name);
    CHECK(tf && tb && tb->type == te->type);
    if (!tf || !tb) continue;
    float *yf = tensor_f32(ff, tf), *yb = tensor_f32(fb, tb), *ye = tensor_f32(fe, te);
    double e_exact = rel_rms(yf, ye, nel), e_bank = rel_rms(yf, yb, nel);
    fprintf(stderr, "%-28s %-4s exact-quant rel err %.4f, block bank %.4f\n", te->name,
            ferry_type_info(te->type)->name, e_exact, e_bank);
    CHECK(e_exact < 0.15);
    CHECK(e_bank > 0.8);
    free(yf), free(yb), free(ye);
    checked++;
  }
  CHECK(checked >= 4);
  gguf_close(ff), gguf_close(fb), gguf_close(fe);
  unlink(pf), unlink(pb), unlink(pe), rmdir(dir);
  CHECK_DONE();
}
