// engine/tokenizer.c: Qwen2/Qwen3 byte-level BPE (MODEL_SPEC §3) and the ChatML template.
//
// Pipeline per tok_encode call:
//   1. added-token partition: every CONTROL/USER_DEFINED/UNKNOWN token text, longest first,
//      splits the not-yet-claimed fragments at each occurrence (llama.cpp's order, so ties
//      between overlapping texts resolve the same way);
//   2. NFC (utf8proc) of each remaining fragment, because Qwen3's tokenizer.json has an NFC
//      normalizer and the model was trained on those ids; invalid UTF-8 bytes are left as is;
//   3. Qwen2 pre-tokenizer regex (PCRE2, UTF + UCP, JIT when available) splits words; text the
//      regex does not match (only invalid bytes can be left over) becomes one word per char;
//   4. BPE per word on token ids: a min tree over symbol positions keyed by (rank, position)
//      picks the next merge, O(k log k) per word of k bytes in bounded memory; words are
//      cached per call when the input is long, since natural text repeats its words.
// The tokenizer itself is read-only after tok_create; all scratch lives in the call.
#include "engine/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "base/base.h"
#include "engine/gguf.h"

// Unicode White_Space property (PropList.txt). PCRE2's UCP \s also matches U+180E, which
// lost White_Space in Unicode 6.3 and is not whitespace for llama.cpp or HF, so the class
// is spelled out.
#define WS               \
  "\\t\\n\\x{0B}\\f\\r " \
  "\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
// The Qwen2 pattern (MODEL_SPEC §3.4) with the case-insensitive contractions expanded the
// way llama.cpp does: PCRE2's caseless matching would also fold U+017F (long s) onto 's'.
static const char k_qwen2_pattern[] =
    "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}"
    "| ?[^" WS
    "\\p{L}\\p{N}]+[\\r\\n]*"
    "|[" WS
    "]*[\\r\\n]+"
    "|[" WS "]+(?![^" WS
    "])"
    "|[" WS "]+";

struct merge_slot {
  uint64_t key; // (left id << 32) | right id; UINT64_MAX = empty
  int32_t rank; // index in tokenizer.ggml.merges
  int32_t res;  // id of the concatenation
};

struct tokenizer {
  int32_t n_vocab;
  int32_t eos;
  uint8_t *type;       // [n_vocab] enum tok_type
  uint8_t *eog;        // [n_vocab] 1 if end of generation
  char *text;          // all token texts, concatenated
  uint64_t *text_off;  // [n_vocab + 1] text of id i is text[text_off[i] .. text_off[i+1])
  char *piece;         // decoded bytes of every token, concatenated
  uint64_t *piece_off; // [n_vocab + 1]
  int32_t *vhash;      // open addressing text -> id, -1 empty
  uint64_t vmask;
  struct merge_slot *merges;
  uint64_t mmask;
  int32_t byte_id[256]; // token of each single byte
  int32_t *special;     // CONTROL/USER_DEFINED/UNKNOWN ids, longest text first
  int32_t n_special;
  bool hybrid; // chat template mentions enable_thinking
  pcre2_code *re;
  bool jit;
};

// ---- small helpers ---------------------------------------------------------------------

static uint64_t hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    s += 8;
    n -= 8;
  }
  uint64_t v = 0;
  memcpy(&v, s, n);
  h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 29;
  return h;
}

static inline uint64_t hash_u64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

// Length of the valid UTF-8 sequence starting at s[0] (strict: no overlongs, surrogates or
// code points above U+10FFFF), or 0 if s[0] does not start one. *cp gets the code point.
static size_t utf8_seq(const uint8_t *s, size_t n, uint32_t *cp) {
  uint8_t c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  uint32_t v, lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    v = c & 0x0F;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    v = c & 0x07;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (n < len) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  v = (v << 6) | (s[1] & 0x3F);
  for (size_t i = 2; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  *cp = v;
  return len;
}

static size_t utf8_put(uint32_t cp, uint8_t *o) {
  if (cp < 0x80) {
    o[0] = (uint8_t)cp;
    return 1;
  }
  if (cp < 0x800) {
    o[0] = (uint8_t)(0xC0 | (cp >> 6));
    o[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    o[0] = (uint8_t)(0xE0 | (cp >> 12));
    o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (uint8_t)(0xF0 | (cp >> 18));
  o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
  o[3] = (uint8_t)(0x80 | (cp & 0x3F));
  return 4;
}

// GPT-2 bytes_to_unicode (MODEL_SPEC §3.2): printable Latin-1 bytes keep their value, the
// other 68 map to U+0100.. in byte order.
static uint32_t byte_to_cp(unsigned b) {
  if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) return b;
  unsigned k = 0;
  for (unsigned x = 0; x < b; x++)
    if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE))) k++;
  return 0x100 + k;
}

// Growable byte / id buffers used while encoding.
struct vec_i32 {
  int32_t *v;
  size_t n, cap;
};
static int vec_push(struct vec_i32 *a, int32_t x) {
  if (a->n == a->cap) {
    size_t nc = a->cap ? a->cap * 2 : 64;
    int32_t *nv = realloc(a->v, nc * sizeof *nv);
    if (!nv) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
    a->v = nv;
    a->cap = nc;
  }
  a->v[a->n++] = x;
  return 0;
}

// ---- vocabulary lookup -------------------------------------------------------------------

int32_t tok_find(const struct tokenizer *t, const char *s, size_t len) {
  if (!t || (!s && len)) return -1;
  for (uint64_t h = hash_bytes(s, len) & t->vmask;; h = (h + 1) & t->vmask) {
    int32_t id = t->vhash[h];
    if (id < 0) return -1;
    uint64_t o = t->text_off[id], l = t->text_off[id + 1] - o;
    if (l == len && !memcmp(t->text + o, s, len)) return id;
  }
}

static inline const struct merge_slot *merge_find(const struct tokenizer *t, int32_t a, int32_t b) {
  uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
  for (uint64_t h = hash_u64(key) & t->mmask;; h = (h + 1) & t->mmask) {
    const struct merge_slot *m = &t->merges[h];
    if (m->key == key) return m;
    if (m->key == UINT64_MAX) return NULL;
  }
}

// ---- construction ------------------------------------------------------------------------

static uint64_t pow2_at_least(uint64_t x) {
  uint64_t p = 16;
  while (p < x) p <<= 1;
  return p;
}

static int cmp_special(const void *a, const void *b, void *ctx) {
  const struct tokenizer *t = ctx;
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  uint64_t lx = t->text_off[x + 1] - t->text_off[x], ly = t->text_off[y + 1] - t->text_off[y];
  if (lx != ly) return lx > ly ? -1 : 1;
  return x < y ? -1 : x > y;
}

// Decoded bytes of a NORMAL/BYTE token: each code point of the byte-level alphabet back to
// its byte; a code point outside the alphabet (never in a real byte-level vocabulary) is
// kept as its UTF-8, and invalid UTF-8 in the stored text is copied as is.
static size_t decode_text(const uint8_t *s, size_t n, const int16_t *cp_to_byte, uint8_t *o) {
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = utf8_seq(s + i, n - i, &cp);
    if (!l) {
      o[k++] = s[i++];
      continue;
    }
    if (cp < 0x144 && cp_to_byte[cp] >= 0) {
      o[k++] = (uint8_t)cp_to_byte[cp];
    } else {
      memcpy(o + k, s + i, l);
      k += l;
    }
    i += l;
  }
  return k;
}

int tok_create(struct tokenizer **out, const struct gguf_file *f) {
  *out = NULL;
  const char *model = gguf_get_str(f, "tokenizer.ggml.model");
  if (!model) return ferry_fail(-EINVAL, "tokenizer: missing tokenizer.ggml.model");
  if (strcmp(model, "gpt2"))
    return ferry_fail(-EINVAL, "tokenizer: model '%s' is not supported (only gpt2 byte-level BPE)",
                      model);
  const char *pre = gguf_get_str(f, "tokenizer.ggml.pre");
  if (pre && strcmp(pre, "qwen2"))
    log_warn("tokenizer: pre-tokenizer '%s' is not qwen2; using the qwen2 pattern anyway", pre);
  const struct gguf_kv *ktok = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
  if (!ktok || !ktok->arr || ktok->arr_n == 0)
    return ferry_fail(-EINVAL, "tokenizer: missing tokenizer.ggml.tokens");
  if (ktok->arr_n > INT32_MAX / 4)
    return ferry_fail(-EINVAL, "tokenizer: %llu tokens is too many",
                      (unsigned long long)ktok->arr_n);
  const struct gguf_kv *ktype = gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_I32);
  if (!ktype || ktype->arr_n != ktok->arr_n)
    return ferry_fail(
        -EINVAL,
        "tokenizer: tokenizer.ggml.token_type is missing or its length differs from tokens");
  const struct gguf_kv *kmerge = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING);
  if (!kmerge) return ferry_fail(-EINVAL, "tokenizer: missing tokenizer.ggml.merges");

  struct tokenizer *t = calloc(1, sizeof *t);
  if (!t) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
  int rc = -ENOMEM;
  const struct gguf_str *toks = ktok->arr;
  int32_t nv = (int32_t)ktok->arr_n;
  t->n_vocab = nv;
  uint64_t total = 0;
  for (int32_t i = 0; i < nv; i++) total += toks[i].len;
  t->type = malloc((size_t)nv);
  t->eog = calloc((size_t)nv, 1);
  t->text_off = malloc(((size_t)nv + 1) * sizeof *t->text_off);
  t->piece_off = malloc(((size_t)nv + 1) * sizeof *t->piece_off);
  t->text = malloc(total + 1);
  t->piece = malloc(total + 1); // decoding never grows a token
  uint64_t vcap = pow2_at_least((uint64_t)nv * 2);
  t->vhash = malloc(vcap * sizeof *t->vhash);
  t->vmask = vcap - 1;
  if (!t->type || !t->eog || !t->text_off || !t->piece_off || !t->text || !t->piece || !t->vhash)
    goto fail_oom;
  memset(t->vhash, 0xFF, vcap * sizeof *t->vhash);

  int16_t cp_to_byte[0x144];
  memset(cp_to_byte, 0xFF, sizeof cp_to_byte);
  for (unsigned b = 0; b < 256; b++) cp_to_byte[byte_to_cp(b)] = (int16_t)b;

  const uint8_t *types = ktype->arr;
  uint64_t off = 0, poff = 0;
  int32_t n_special = 0;
  for (int32_t i = 0; i < nv; i++) {
    int32_t ty;
    memcpy(&ty, types + 4 * (size_t)i, 4);
    if (ty < TOK_TYPE_NORMAL || ty > TOK_TYPE_BYTE)
      ty = TOK_TYPE_NORMAL; // unknown kinds act as text
    t->type[i] = (uint8_t)ty;
    t->text_off[i] = off;
    memcpy(t->text + off, toks[i].data, toks[i].len);
    t->piece_off[i] = poff;
    if (ty == TOK_TYPE_NORMAL || ty == TOK_TYPE_BYTE)
      poff += decode_text((const uint8_t *)toks[i].data, toks[i].len, cp_to_byte,
                          (uint8_t *)t->piece + poff);
    else {
      memcpy(t->piece + poff, toks[i].data, toks[i].len);
      poff += toks[i].len;
    }
    off += toks[i].len;
    if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED || ty == TOK_TYPE_UNKNOWN) &&
        toks[i].len > 0)
      n_special++;
    // First id wins for a duplicated text.
    for (uint64_t h = hash_bytes(toks[i].data, toks[i].len) & t->vmask;; h = (h + 1) & t->vmask) {
      int32_t id = t->vhash[h];
      if (id < 0) {
        t->vhash[h] = i;
        break;
      }
      uint64_t o = t->text_off[id];
      if (o + toks[i].len == t->text_off[id + 1] && !memcmp(t->text + o, toks[i].data, toks[i].len))
        break;
    }
    t->text_off[i + 1] = off; // needed by the probe above for later ids
  }
  t->text_off[nv] = off;
  t->piece_off[nv] = poff;

  for (unsigned b = 0; b < 256; b++) {
    uint8_t u[4];
    size_t l = utf8_put(byte_to_cp(b), u);
    t->byte_id[b] = tok_find(t, (const char *)u, l);
    if (t->byte_id[b] < 0) {
      rc = ferry_fail(-EINVAL,
                      "tokenizer: the vocabulary has no token for byte 0x%02X (not byte-level BPE)",
                      b);
      goto fail;
    }
  }

  // Merges keyed by (left id, right id). A merge whose parts or result are not tokens can
  // never fire in a byte-level vocabulary; it is skipped (counted in the debug log).
  uint64_t nm = kmerge->arr_n, skipped = 0;
  if (nm > INT32_MAX) {
    rc = ferry_fail(-EINVAL, "tokenizer: %llu merges is too many", (unsigned long long)nm);
    goto fail;
  }
  uint64_t mcap = pow2_at_least(nm * 2 + 2);
  t->merges = malloc(mcap * sizeof *t->merges);
  if (!t->merges) goto fail_oom;
  t->mmask = mcap - 1;
  for (uint64_t i = 0; i < mcap; i++) t->merges[i].key = UINT64_MAX;
  const struct gguf_str *ms = kmerge->arr;
  char *cat = malloc(total + 1);
  size_t cat_cap = total + 1;
  if (!cat) goto fail_oom;
  for (uint64_t r = 0; r < nm; r++) {
    const char *s = ms[r].data;
    uint64_t len = ms[r].len;
    const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
    if (!sp) {
      skipped++;
      continue;
    }
    size_t la = (size_t)(sp - s), lb = len - la - 1;
    int32_t a = tok_find(t, s, la), b = tok_find(t, sp + 1, lb);
    if (a < 0 || b < 0 || la + lb >= cat_cap) {
      skipped++;
      continue;
    }
    memcpy(cat, s, la);
    memcpy(cat + la, sp + 1, lb);
    int32_t res = tok_find(t, cat, la + lb);
    if (res < 0) {
      skipped++;
      continue;
    }
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint64_t h = hash_u64(key) & t->mmask;; h = (h + 1) & t->mmask) {
      struct merge_slot *m = &t->merges[h];
      if (m->key == key) break; // the lower rank came first
      if (m->key == UINT64_MAX) {
        m->key = key;
        m->rank = (int32_t)r;
        m->res = res;
        break;
      }
    }
  }
  free(cat);
  if (skipped)
    log_debug("tokenizer: %llu of %llu merges skipped (malformed or not in the vocabulary)",
              (unsigned long long)skipped, (unsigned long long)nm);

  t->special = malloc(((size_t)n_special + 1) * sizeof *t->special);
  if (!t->special) goto fail_oom;
  for (int32_t i = 0; i < nv; i++) {
    uint8_t ty = t->type[i];
    if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED || ty == TOK_TYPE_UNKNOWN) &&
        t->text_off[i + 1] > t->text_off[i])
      t->special[t->n_special++] = i;
  }
  qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special, t);

  uint32_t eos;
  t->eos = -1;
  if (gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos) == 0 && eos < (uint32_t)nv)
    t->eos = (int32_t)eos;
  ferry_clear_error();
  if (t->eos < 0) t->eos = tok_find(t, "<|im_end|>", 10);
  if (t->eos >= 0) t->eog[t->eos] = 1;
  static const char *const eog_texts[] = {"<|endoftext|>", "<|im_end|>",   "<|fim_pad|>",
                                          "<|repo_name|>", "<|file_sep|>", "</s>"};
  for (size_t i = 0; i < sizeof eog_texts / sizeof *eog_texts; i++) {
    int32_t id = tok_find(t, eog_texts[i], strlen(eog_texts[i]));
    if (id >= 0) t->eog[id] = 1;
  }
  const char *tmpl = gguf_get_str(f, "tokenizer.chat_template");
  t->hybrid = tmpl && strstr(tmpl, "enable_thinking");

  int err;
  PCRE2_SIZE eoff;
  t->re = pcre2_compile((PCRE2_SPTR)k_qwen2_pattern, PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &eoff, NULL);
  if (!t->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    rc = ferry_fail(-EINVAL, "tokenizer: PCRE2 rejected the qwen2 pattern at %zu: %s", (size_t)eoff,
                    (char *)msg);
    goto fail;
  }
  t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
  if (!t->jit) log_debug("tokenizer: PCRE2 JIT unavailable, using the interpreter");
  *out = t;
  return 0;

fail_oom:
  rc = ferry_fail(-ENOMEM, "tokenizer: out of memory");
fail:
  tok_destroy(t);
  return rc;
}

void tok_destroy(struct tokenizer *t) {
  if (!t) return;
  pcre2_code_free(t->re);
  free(t->type);
  free(t->eog);
  free(t->text);
  free(t->text_off);
  free(t->piece);
  free(t->piece_off);
  free(t->vhash);
  free(t->merges);
  free(t->special);
  free(t);
}

int32_t tok_n_vocab(const struct tokenizer *t) { return t->n_vocab; }
int32_t tok_eos(const struct tokenizer *t) { return t->eos; }
int tok_token_type(const struct tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab ? t->type[id] : 0;
}
bool tok_is_eog(const struct tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_vocab && t->eog[id];
}
bool tok_chat_is_hybrid(const struct tokenizer *t) { return t->hybrid; }

// ---- encoding ----------------------------------------------------------------------------

struct wcache_slot {
  uint64_t hash;
  uint32_t key_off, key_len; // in key bytes
  uint32_t ids_off, ids_len; // in cache ids
};

struct enc {
  const struct tokenizer *t;
  struct vec_i32 out;
  // BPE scratch, grown to the longest word seen
  int32_t *sym_id, *sym_next, *sym_prev, *sym_res; // per initial byte position
  uint64_t *tree; // min tree over positions: (rank << 32 | position) of the pair starting there
  size_t cap;     // symbols; the tree has 2 * cap slots
  // normalized fragment
  uint8_t *norm;
  size_t norm_cap;
  // word cache (NULL when the input is short)
  struct wcache_slot *wc;
  uint64_t wc_mask, wc_used;
  uint8_t *wc_keys;
  size_t wc_keys_n, wc_keys_cap;
  struct vec_i32 wc_ids;
  pcre2_match_data *md;
};

static int enc_reserve(struct enc *e, size_t n) {
  if (n <= e->cap) return 0;
  size_t nc = e->cap ? e->cap : 64;
  while (nc < n) nc *= 2;
  int32_t **arr[] = {&e->sym_id, &e->sym_next, &e->sym_prev, &e->sym_res};
  for (size_t k = 0; k < 4; k++) {
    int32_t *a = realloc(*arr[k], nc * sizeof *a);
    if (!a) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
    *arr[k] = a;
  }
  uint64_t *tr = realloc(e->tree, 2 * nc * sizeof *tr);
  if (!tr) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
  e->tree = tr;
  e->cap = nc;
  return 0;
}

#define NO_PAIR UINT64_MAX

// Key of the pair that starts at symbol l: (rank << 32 | l), so the minimum is the lowest
// rank and, among equal ranks (the same pair), the leftmost; records the merge result.
static inline uint64_t pair_key(struct enc *e, int32_t l, int32_t n) {
  int32_t r = e->sym_next[l];
  if (r >= n) return NO_PAIR;
  const struct merge_slot *m = merge_find(e->t, e->sym_id[l], e->sym_id[r]);
  if (!m) return NO_PAIR;
  e->sym_res[l] = m->res;
  return ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)l;
}

// Sets leaf pos and repairs its ancestors, stopping where the minimum does not change.
static inline void tree_set(uint64_t *tr, size_t leaves, size_t pos, uint64_t key) {
  size_t i = leaves + pos;
  tr[i] = key;
  for (i >>= 1; i; i >>= 1) {
    uint64_t a = tr[2 * i], b = tr[2 * i + 1], m = a < b ? a : b;
    if (tr[i] == m) break;
    tr[i] = m;
  }
}

// BPE of one word (raw bytes); appends the ids to e->out. Symbols are a linked list over
// the initial byte positions; a min tree over positions keyed by (rank, position) gives the
// next merge in O(1) and each merge updates three leaves in O(log n), with no stale entries
// and 48 bytes of scratch per byte however long the word is.
static int bpe_word_uncached(struct enc *e, const uint8_t *w, size_t n) {
  const struct tokenizer *t = e->t;
  if (n == 1) return vec_push(&e->out, t->byte_id[w[0]]);
  if (n > INT32_MAX / 4) return ferry_fail(-EINVAL, "tokenizer: word of %zu bytes is too long", n);
  size_t leaves = 1;
  while (leaves < n) leaves <<= 1;
  int rc = enc_reserve(e, leaves);
  if (rc) return rc;
  int32_t ni = (int32_t)n;
  for (int32_t i = 0; i < ni; i++) {
    e->sym_id[i] = t->byte_id[w[i]];
    e->sym_next[i] = i + 1;
    e->sym_prev[i] = i - 1;
  }
  uint64_t *tr = e->tree;
  for (int32_t i = 0; i < ni; i++) tr[leaves + i] = pair_key(e, i, ni);
  for (size_t i = n; i < leaves; i++) tr[leaves + i] = NO_PAIR;
  for (size_t i = leaves - 1; i >= 1; i--)
    tr[i] = tr[2 * i] < tr[2 * i + 1] ? tr[2 * i] : tr[2 * i + 1];
  while (tr[1] != NO_PAIR) {
    int32_t l = (int32_t)(uint32_t)tr[1], r = e->sym_next[l];
    e->sym_id[l] = e->sym_res[l];
    e->sym_id[r] = -1;
    int32_t nx = e->sym_next[r];
    e->sym_next[l] = nx;
    if (nx < ni) e->sym_prev[nx] = l;
    tree_set(tr, leaves, (size_t)r, NO_PAIR);
    tree_set(tr, leaves, (size_t)l, pair_key(e, l, ni));
    int32_t pv = e->sym_prev[l];
    if (pv >= 0) tree_set(tr, leaves, (size_t)pv, pair_key(e, pv, ni));
  }
  for (int32_t i = 0; i < ni; i = e->sym_next[i])
    if ((rc = vec_push(&e->out, e->sym_id[i]))) return rc;
  return 0;
}

enum { WC_MAX_WORD = 64, WC_MAX_SLOTS = 1 << 16 };

static int bpe_word(struct enc *e, const uint8_t *w, size_t n) {
  if (!e->wc || n > WC_MAX_WORD || n == 1) return bpe_word_uncached(e, w, n);
  uint64_t h = hash_bytes(w, n);
  uint64_t i = h & e->wc_mask;
  for (;; i = (i + 1) & e->wc_mask) {
    struct wcache_slot *s = &e->wc[i];
    if (s->key_len == 0) break;
    if (s->hash == h && s->key_len == n && !memcmp(e->wc_keys + s->key_off, w, n)) {
      for (uint32_t k = 0; k < s->ids_len; k++) {
        int rc = vec_push(&e->out, e->wc_ids.v[s->ids_off + k]);
        if (rc) return rc;
      }
      return 0;
    }
  }
  size_t before = e->out.n;
  int rc = bpe_word_uncached(e, w, n);
  if (rc) return rc;
  if (e->wc_used * 2 >= e->wc_mask + 1) return 0; // full: stop caching, still correct
  if (e->wc_keys_n + n > e->wc_keys_cap) {
    size_t nc = e->wc_keys_cap * 2 + n;
    uint8_t *nk = realloc(e->wc_keys, nc);
    if (!nk) return 0; // caching is optional
    e->wc_keys = nk;
    e->wc_keys_cap = nc;
  }
  size_t ids_off = e->wc_ids.n;
  for (size_t k = before; k < e->out.n; k++)
    if (vec_push(&e->wc_ids, e->out.v[k])) {
      ferry_clear_error();
      e->wc_ids.n = ids_off;
      return 0;
    }
  memcpy(e->wc_keys + e->wc_keys_n, w, n);
  e->wc[i] = (struct wcache_slot){h, (uint32_t)e->wc_keys_n, (uint32_t)n, (uint32_t)ids_off,
                                  (uint32_t)(e->out.n - before)};
  e->wc_keys_n += n;
  e->wc_used++;
  return 0;
}

// Appends NFC(valid runs of s) with invalid bytes copied through to e->norm; returns the
// bytes to pre-tokenize (s itself when nothing changes).
static int normalize(struct enc *e, const uint8_t *s, size_t n, const uint8_t **res,
                     size_t *res_n) {
  // Code points below U+0300 are all NFC-stable and compose with nothing before U+0300, so
  // text made only of them is already NFC.
  size_t i = 0;
  while (i < n && s[i] < 0xCC) i++; // 0xCC starts U+0300
  if (i == n) {
    *res = s;
    *res_n = n;
    return 0;
  }
  size_t need = n + 16;
  if (e->norm_cap < need) {
    uint8_t *nb = realloc(e->norm, need);
    if (!nb) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
    e->norm = nb;
    e->norm_cap = need;
  }
  size_t k = 0;
  for (size_t p = 0; p < n;) {
    size_t q = p;
    uint32_t cp;
    size_t l;
    while (q < n && (l = utf8_seq(s + q, n - q, &cp)) > 0) q += l;
    if (q > p) {
      utf8proc_uint8_t *dst = NULL;
      utf8proc_ssize_t dl =
          utf8proc_map(s + p, (utf8proc_ssize_t)(q - p), &dst, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
      const uint8_t *src = s + p;
      size_t sl = q - p;
      if (dl >= 0) {
        src = dst;
        sl = (size_t)dl;
      } // else: keep the run as is (utf8proc only fails on out of memory here)
      if (k + sl + (n - q) > e->norm_cap) {
        size_t nc = k + sl + (n - q) + 16;
        uint8_t *nb = realloc(e->norm, nc);
        if (!nb) {
          free(dst);
          return ferry_fail(-ENOMEM, "tokenizer: out of memory");
        }
        e->norm = nb;
        e->norm_cap = nc;
      }
      memcpy(e->norm + k, src, sl);
      k += sl;
      free(dst);
    }
    if (q < n) e->norm[k++] = s[q++]; // one invalid byte
    p = q;
  }
  *res = e->norm;
  *res_n = k;
  return 0;
}

// Each char (or invalid byte) of s[0..n) as its own word.
static int split_chars(struct enc *e, const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t l = utf8_seq(s + i, n - i, &cp);
    if (!l) l = 1;
    int rc = bpe_word(e, s + i, l);
    if (rc) return rc;
    i += l;
  }
  return 0;
}

static int encode_fragment(struct enc *e, const uint8_t *s0, size_t n0) {
  const uint8_t *s = s0;
  size_t n = n0;
  int rc = normalize(e, s0, n0, &s, &n);
  if (rc) return rc;
  const struct tokenizer *t = e->t;
  size_t off = 0;
  while (off < n) {
    int m = t->jit ? pcre2_jit_match(t->re, s, n, off, 0, e->md, NULL)
                   : pcre2_match(t->re, s, n, off, 0, e->md, NULL);
    if (m < 0 && m != PCRE2_ERROR_NOMATCH && t->jit) // JIT stack exhausted: retry interpreted
      m = pcre2_match(t->re, s, n, off, 0, e->md, NULL);
    if (m == PCRE2_ERROR_NOMATCH) return split_chars(e, s + off, n - off);
    size_t ms, me;
    if (m < 0) { // a resource limit: take one char and go on
      uint32_t cp;
      size_t l = utf8_seq(s + off, n - off, &cp);
      ms = off;
      me = off + (l ? l : 1);
    } else {
      PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
      ms = ov[0];
      me = ov[1];
      if (me <= ms || ms < off) { // cannot happen (no empty alternatives); stay safe
        ms = off;
        me = off + 1;
      }
    }
    if (ms > off && (rc = split_chars(e, s + off, ms - off))) return rc;
    if ((rc = bpe_word(e, s + ms, me - ms))) return rc;
    off = me;
  }
  return 0;
}

struct frag {
  size_t off, len;
  int32_t id; // -1: text to pre-tokenize
};

int tok_encode(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
               int32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  if (!text && len) return ferry_fail(-EINVAL, "tokenizer: NULL text");
  if (!len) return 0;
  int rc = 0;
  struct enc e = {.t = t};
  struct frag *fr = malloc(sizeof *fr), *fr2 = NULL;
  size_t nfr = 1, cap = 1;
  if (!fr) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
  fr[0] = (struct frag){0, len, -1};

  // 1. Added tokens, longest text first (llama.cpp's tokenizer_st_partition order).
  for (int32_t si = 0; si < t->n_special; si++) {
    int32_t id = t->special[si];
    if (!parse_special && (t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_UNKNOWN))
      continue;
    const char *st = t->text + t->text_off[id];
    size_t sl = t->text_off[id + 1] - t->text_off[id];
    if (!memmem(text, len, st, sl)) continue;
    size_t n2 = 0, cap2 = nfr + 8;
    fr2 = malloc(cap2 * sizeof *fr2);
    if (!fr2) goto oom;
    for (size_t k = 0; k < nfr; k++) {
      struct frag f = fr[k];
      for (;;) {
        const char *hit = f.id < 0 ? memmem(text + f.off, f.len, st, sl) : NULL;
        if (n2 + 3 > cap2) {
          cap2 = cap2 * 2 + 3;
          struct frag *g = realloc(fr2, cap2 * sizeof *g);
          if (!g) goto oom;
          fr2 = g;
        }
        if (!hit) {
          if (f.len || f.id >= 0) fr2[n2++] = f;
          break;
        }
        size_t ho = (size_t)(hit - text);
        if (ho > f.off) fr2[n2++] = (struct frag){f.off, ho - f.off, -1};
        fr2[n2++] = (struct frag){ho, sl, id};
        f.len -= ho + sl - f.off;
        f.off = ho + sl;
      }
    }
    free(fr);
    fr = fr2;
    fr2 = NULL;
    nfr = n2;
    cap = cap2;
  }
  (void)cap;

  e.md = pcre2_match_data_create_from_pattern(t->re, NULL);
  if (!e.md) goto oom;
  if (len >= 4096) { // long input: words repeat, cache their BPE
    uint64_t slots = pow2_at_least(len / 4 < WC_MAX_SLOTS ? len / 4 : WC_MAX_SLOTS);
    e.wc = calloc(slots, sizeof *e.wc);
    if (e.wc) {
      e.wc_mask = slots - 1;
      e.wc_keys_cap = 4096;
      e.wc_keys = malloc(e.wc_keys_cap);
      if (!e.wc_keys) {
        free(e.wc);
        e.wc = NULL;
      }
    }
  }
  for (size_t k = 0; k < nfr && !rc; k++) {
    if (fr[k].id >= 0)
      rc = vec_push(&e.out, fr[k].id);
    else
      rc = encode_fragment(&e, (const uint8_t *)text + fr[k].off, fr[k].len);
  }
  goto done;

oom:
  rc = ferry_fail(-ENOMEM, "tokenizer: out of memory");
done:
  free(fr);
  free(fr2);
  pcre2_match_data_free(e.md);
  free(e.sym_id);
  free(e.sym_next);
  free(e.sym_prev);
  free(e.sym_res);
  free(e.tree);
  free(e.norm);
  free(e.wc);
  free(e.wc_keys);
  free(e.wc_ids.v);
  if (rc) {
    free(e.out.v);
    return rc;
  }
  *ids = e.out.v;
  *n = e.out.n;
  if (!e.out.n) {
    free(e.out.v);
    *ids = NULL;
  }
  return 0;
}

// ---- decoding ----------------------------------------------------------------------------

int tok_piece(const struct tokenizer *t, int32_t id, const char **bytes, size_t *len) {
  if (id < 0 || id >= t->n_vocab)
    return ferry_fail(-EINVAL, "tokenizer: token id %d out of range [0, %d)", id, t->n_vocab);
  *bytes = t->piece + t->piece_off[id];
  *len = t->piece_off[id + 1] - t->piece_off[id];
  return 0;
}

static bool shown(const struct tokenizer *t, int32_t id, bool show_special) {
  uint8_t ty = t->type[id];
  return show_special ||
         !(ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN || ty == TOK_TYPE_UNUSED);
}

int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool show_special,
               char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->n_vocab)
      return ferry_fail(-EINVAL, "tokenizer: token id %d out of range [0, %d)", ids[i], t->n_vocab);
    if (shown(t, ids[i], show_special)) total += t->piece_off[ids[i] + 1] - t->piece_off[ids[i]];
  }
  char *s = malloc(total + 1);
  if (!s) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!shown(t, ids[i], show_special)) continue;
    size_t l = t->piece_off[ids[i] + 1] - t->piece_off[ids[i]];
    memcpy(s + k, t->piece + t->piece_off[ids[i]], l);
    k += l;
  }
  s[k] = 0;
  *out = s;
  *len = k;
  return 0;
}

struct tok_decoder {
  const struct tokenizer *t;
  bool show_special;
  uint8_t held[4];
  size_t n_held;
  char *buf;
  size_t cap;
};

int tok_decoder_create(struct tok_decoder **out, const struct tokenizer *t, bool show_special) {
  struct tok_decoder *d = calloc(1, sizeof *d);
  if (!d) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
  d->t = t;
  d->show_special = show_special;
  *out = d;
  return 0;
}

void tok_decoder_destroy(struct tok_decoder *d) {
  if (!d) return;
  free(d->buf);
  free(d);
}

// Number of bytes at the end of s[0..n) that are a proper prefix of a valid UTF-8 sequence
// (which the next bytes may complete), else 0.
static size_t incomplete_tail(const uint8_t *s, size_t n) {
  for (size_t back = 1; back <= 3 && back <= n; back++) {
    uint8_t c = s[n - back];
    if ((c & 0xC0) == 0x80) continue; // continuation: keep looking for the lead
    size_t need = c >= 0xC2 && c <= 0xDF   ? 2
                  : c >= 0xE0 && c <= 0xEF ? 3
                  : c >= 0xF0 && c <= 0xF4 ? 4
                                           : 0;
    if (need <= back) return 0; // ASCII, invalid lead, or already complete
    if (back >= 2) {            // the second byte must fit the lead's range
      uint8_t c1 = s[n - back + 1];
      uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
      uint8_t hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
      if (c1 < lo || c1 > hi) return 0;
    }
    return back;
  }
  return 0;
}

int tok_decoder_push(struct tok_decoder *d, int32_t id, const char **bytes, size_t *len) {
  const struct tokenizer *t = d->t;
  *bytes = "";
  *len = 0;
  if (id < 0 || id >= t->n_vocab)
    return ferry_fail(-EINVAL, "tokenizer: token id %d out of range [0, %d)", id, t->n_vocab);
  if (!shown(t, id, d->show_special)) return 0;
  size_t pl = t->piece_off[id + 1] - t->piece_off[id];
  size_t need = d->n_held + pl + 1;
  if (need > d->cap) {
    char *nb = realloc(d->buf, need);
    if (!nb) return ferry_fail(-ENOMEM, "tokenizer: out of memory");
    d->buf = nb;
    d->cap = need;
  }
  memcpy(d->buf, d->held, d->n_held);
  memcpy(d->buf + d->n_held, t->piece + t->piece_off[id], pl);
  size_t n = d->n_held + pl;
  size_t tail = incomplete_tail((const uint8_t *)d->buf, n);
  memcpy(d->held, d->buf + n - tail, tail);
  d->n_held = tail;
  *bytes = d->buf;
  *len = n - tail;
  return 0;
}

void tok_decoder_flush(struct tok_decoder *d, const char **bytes, size_t *len) {
  if (d->cap < 4) {
    char *nb = realloc(d->buf, 4);
    if (!nb) { // cannot happen in practice; drop the partial character
      d->n_held = 0;
      *bytes = "";
      *len = 0;
      return;
    }
    d->buf = nb;
    d->cap = 4;
  }
  memcpy(d->buf, d->held, d->n_held);
  *bytes = d->buf;
  *len = d->n_held;
  d->n_held = 0;
}

// ---- chat template -----------------------------------------------------------------------

int tok_render_chat(const struct tokenizer *t, const char *system, const char *user, unsigned flags,
                    char **out) {
  *out = NULL;
  if (!user) return ferry_fail(-EINVAL, "chat: no user message");
  static const char sys_a[] = "<|im_start|>system\n", end[] = "<|im_end|>\n",
                    usr_a[] = "<|im_start|>user\n", gen[] = "<|im_start|>assistant\n",
                    no_think[] = "<think>\n\n</think>\n\n";
  bool think_block = (flags & TOK_CHAT_NO_THINK) && t && t->hybrid;
  size_t n = (system ? strlen(sys_a) + strlen(system) + strlen(end) : 0) + strlen(usr_a) +
             strlen(user) + strlen(end) + strlen(gen) + (think_block ? strlen(no_think) : 0);
  char *s = malloc(n + 1);
  if (!s) return ferry_fail(-ENOMEM, "chat: out of memory");
  char *p = s;
  if (system) p = stpcpy(stpcpy(stpcpy(p, sys_a), system), end);
  p = stpcpy(stpcpy(stpcpy(stpcpy(p, usr_a), user), end), gen);
  if (think_block) p = stpcpy(p, no_think);
  *out = s;
  return 0;
}
