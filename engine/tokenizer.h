// engine/tokenizer.h: Qwen2/Qwen3 byte-level BPE tokenizer (GGUF `gpt2` model, `qwen2`
// pre-tokenizer) and the ChatML prompt template.
//
// Encoding (MODEL_SPEC §3.3): added tokens are split out first (longest text first), each
// remaining fragment is normalized to NFC (as Qwen3's HF tokenizer does; llama.cpp does
// not), split into words by the Qwen2 regex (PCRE2, Unicode properties), each word's bytes
// are merged by BPE rank. Invalid UTF-8 never fails: each invalid byte is its own word and
// becomes its byte token, so decode(encode(s)) == NFC(s) for valid s and == s byte for byte
// for any s that NFC leaves alone (ASCII, already-NFC text, invalid bytes).
//
// A struct tokenizer is immutable after tok_create and may be used from any number of
// threads at once; tok_encode allocates its scratch per call. A struct tok_decoder holds
// streaming state and belongs to one thread.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gguf_file;
struct tokenizer;

// GGUF tokenizer.ggml.token_type values.
enum tok_type {
  TOK_TYPE_NORMAL = 1,
  TOK_TYPE_UNKNOWN = 2,
  TOK_TYPE_CONTROL = 3,
  TOK_TYPE_USER_DEFINED = 4,
  TOK_TYPE_UNUSED = 5,
  TOK_TYPE_BYTE = 6,
};

// Builds the tokenizer from f's tokenizer.ggml.* keys (tokens, token_type, merges,
// eos_token_id, chat_template). Copies everything it needs: f may be closed afterwards.
// Fails with -EINVAL and a message if the model is not `gpt2` byte-level BPE, an array is
// missing or inconsistent, or a byte symbol is absent from the vocabulary; -ENOMEM.
int tok_create(struct tokenizer **out, const struct gguf_file *f);
void tok_destroy(struct tokenizer *t); // NULL-safe

int32_t tok_n_vocab(const struct tokenizer *t);
int32_t tok_eos(const struct tokenizer *t);                // eos_token_id (<|im_end|> for Qwen3)
int tok_token_type(const struct tokenizer *t, int32_t id); // enum tok_type; 0 if out of range
// End of generation: eos_token_id and the tokens whose text is <|endoftext|>, <|im_end|>,
// <|fim_pad|>, <|repo_name|>, <|file_sep|> or </s> (the set llama.cpp uses; MODEL_SPEC §3.6,
// fixtures README §2). False for out-of-range ids.
bool tok_is_eog(const struct tokenizer *t, int32_t id);
// Id of the token whose text is exactly text[0..len), or -1.
int32_t tok_find(const struct tokenizer *t, const char *text, size_t len);

// Encodes text[0..len) (any bytes; need not be NUL-terminated). parse_special = true
// matches every CONTROL/USER_DEFINED/UNKNOWN token text (use for rendered chat prompts);
// false leaves CONTROL and UNKNOWN texts as plain text but still matches USER_DEFINED ones
// (<think>, <tool_call>, ...), as llama.cpp does. No BOS/EOS is added. On success *ids is
// a malloc'd array of *n ids (NULL when *n == 0) that the caller frees. -ENOMEM or -EINVAL
// (text == NULL with len > 0) with a message; *ids = NULL, *n = 0 then.
int tok_encode(const struct tokenizer *t, const char *text, size_t len, bool parse_special,
               int32_t **ids, size_t *n);

// The bytes of one token: NORMAL/BYTE tokens decoded from the byte-level alphabet (may be a
// partial UTF-8 sequence), every other type its text as stored. *bytes points into t (valid
// until tok_destroy, not NUL-terminated). -EINVAL for an out-of-range id.
int tok_piece(const struct tokenizer *t, int32_t id, const char **bytes, size_t *len);

// Decodes ids into one malloc'd NUL-terminated string (*out, *len bytes without the NUL).
// CONTROL, UNKNOWN and UNUSED tokens are skipped unless show_special. -EINVAL on an
// out-of-range id, -ENOMEM.
int tok_decode(const struct tokenizer *t, const int32_t *ids, size_t n, bool show_special,
               char **out, size_t *len);

// Streaming decoder: feeds one id at a time and returns only complete UTF-8 characters; a
// partial sequence at the end is held until its last byte arrives (or until a byte shows it
// can never complete, then it is passed through as is).
struct tok_decoder;
int tok_decoder_create(struct tok_decoder **out, const struct tokenizer *t, bool show_special);
void tok_decoder_destroy(struct tok_decoder *d); // NULL-safe
// Appends id's bytes; *bytes/*len is what may be printed now (may be empty). The pointer is
// valid until the next call on d. -EINVAL on an out-of-range id (state unchanged).
int tok_decoder_push(struct tok_decoder *d, int32_t id, const char **bytes, size_t *len);
// Returns whatever is still held (an incomplete sequence at the end of the stream) and resets.
void tok_decoder_flush(struct tok_decoder *d, const char **bytes, size_t *len);

// ---- chat template (ChatML as Qwen3 uses it; MODEL_SPEC §3.8) ----
enum tok_chat_flags {
  // Hybrid (thinking) Qwen3 templates only: append the empty think block that the template
  // emits for enable_thinking=false. Ignored for Instruct-2507 / Next-Instruct templates.
  TOK_CHAT_NO_THINK = 1u << 0,
};
// True if the file's chat template is the hybrid Qwen3 one (its text mentions
// enable_thinking); false for the non-thinking Instruct templates and when absent.
bool tok_chat_is_hybrid(const struct tokenizer *t);
// Renders "<|im_start|>system\n{system}<|im_end|>\n" (only if system != NULL),
// "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n" and, for a hybrid template
// with TOK_CHAT_NO_THINK, "<think>\n\n</think>\n\n". Tokenize the result with
// parse_special = true. *out is malloc'd, NUL-terminated; the caller frees. -EINVAL if user
// is NULL, -ENOMEM.
int tok_render_chat(const struct tokenizer *t, const char *system, const char *user, unsigned flags,
                    char **out);

#ifdef __cplusplus
}
#endif
