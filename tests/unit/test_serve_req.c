// tests/unit/test_serve_req.c: request bodies -> generation parameters (engine/serve_req.c):
// the fields of both APIs land where they should, chat messages render as `ferry run`
// renders one turn, and every bad body is refused with a message naming the field.
#include <errno.h>
#include <string.h>

#include "../check.h"
#include "base/base.h"
#include "engine/serve_req.h"
#include "engine/tokenizer.h"

static int parse(enum serve_api api, const char *body, struct serve_req *r) {
  return serve_req_parse(r, api, body, strlen(body));
}

// The body must be refused with a message containing `want`.
static void bad(enum serve_api api, const char *body, const char *want) {
  struct serve_req r;
  int rc = parse(api, body, &r);
  if (rc != -EINVAL || !strstr(ferry_errmsg(), want)) {
    fprintf(stderr, "body %s: rc %d, message '%s', want '%s'\n", body, rc, ferry_errmsg(), want);
    CHECK(false);
  }
  serve_req_free(&r);
}

static void openai_chat(void) {
  struct serve_req r;
  const char *body =
      "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hi \"},"
      "{\"type\":\"text\",\"text\":\"there\"}]}],\"stream\":true,"
      "\"stream_options\":{\"include_usage\":true},\"max_tokens\":7,\"temperature\":0.5,"
      "\"top_p\":0.9,\"top_k\":5,\"min_p\":0.1,\"seed\":42,\"stop\":[\"a\",\"bc\"],\"n\":1,"
      "\"presence_penalty\":0,\"user\":\"x\",\"max_completion_tokens\":9}";
  CHECK_EQ(parse(SERVE_OAI_CHAT, body, &r), 0);
  CHECK(!strcmp(r.model, "m"));
  char *want;
  CHECK_EQ(tok_render_chat(NULL, "Be brief.", "Hi there", 0, &want), 0);
  CHECK(!strcmp(r.prompt, want)); // the same text `ferry run --system ... -p ...` tokenizes
  CHECK_EQ(r.prompt_len, strlen(want));
  free(want);
  CHECK(r.stream && r.include_usage);
  CHECK_EQ(r.n_predict, 9); // max_completion_tokens wins
  CHECK(r.temp_set && r.temp == 0.5f && r.top_p_set && r.top_p == 0.9f && r.top_k == 5);
  CHECK(r.min_p_set && r.seed_set && r.seed == 42);
  CHECK_EQ(r.n_stop, 2);
  CHECK(!strcmp(r.stop[1], "bc"));
  serve_req_free(&r);

  // multi-turn: an earlier answer's reasoning is dropped as Qwen3's template does
  CHECK_EQ(parse(SERVE_OAI_CHAT,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
                 "\"content\":\"<think>\\nhm\\n</think>\\n\\nb\"},{\"role\":\"developer\","
                 "\"content\":\"c\"},{\"role\":\"assistant\",\"content\":null}],\"seed\":-1}",
                 &r),
           0);
  CHECK(!strcmp(r.prompt,
                "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                "<|im_start|>system\nc<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
                "<|im_start|>assistant\n"));
  CHECK(!r.stream && !r.seed_set && !r.temp_set); // seed -1: random
  CHECK_EQ(r.n_predict, SERVE_N_PREDICT_UNSET);
  serve_req_free(&r);
}

static void openai_completion(void) {
  struct serve_req r;
  CHECK_EQ(
      parse(SERVE_OAI_COMPLETION, "{\"prompt\":[\"raw text\"],\"stop\":\"x\",\"echo\":false}", &r),
      0);
  CHECK(!strcmp(r.prompt, "raw text") && r.n_stop == 1 && !strcmp(r.stop[0], "x"));
  serve_req_free(&r);
}

static void ollama(void) {
  struct serve_req r;
  CHECK_EQ(
      parse(SERVE_OLLAMA_CHAT,
            "{\"model\":\"m:latest\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],"
            "\"options\":{\"num_predict\":-1,\"num_ctx\":64,\"temperature\":0,\"stop\":[\"z\"],"
            "\"repeat_penalty\":1.1},\"keep_alive\":\"5m\"}",
            &r),
      0);
  CHECK(r.stream); // Ollama streams unless told otherwise
  CHECK_EQ(r.n_predict, -1);
  CHECK_EQ(r.num_ctx, 64);
  CHECK(r.temp_set && r.temp == 0 && r.n_stop == 1);
  serve_req_free(&r);

  char *want;
  CHECK_EQ(parse(SERVE_OLLAMA_GENERATE,
                 "{\"prompt\":\"q\",\"system\":\"s\",\"stream\":false,\"images\":[]}", &r),
           0);
  CHECK_EQ(tok_render_chat(NULL, "s", "q", 0, &want), 0);
  CHECK(!strcmp(r.prompt, want) && !r.stream);
  free(want);
  serve_req_free(&r);
  CHECK_EQ(parse(SERVE_OLLAMA_GENERATE, "{\"prompt\":\"<x>\",\"raw\":true}", &r), 0);
  CHECK(!strcmp(r.prompt, "<x>"));
  serve_req_free(&r);
  // no prompt / no messages: Ollama's "load the model" request
  CHECK_EQ(parse(SERVE_OLLAMA_GENERATE, "{\"model\":\"m\"}", &r), 0);
  CHECK(r.load_only);
  serve_req_free(&r);
  CHECK_EQ(parse(SERVE_OLLAMA_CHAT, "{\"model\":\"m\",\"messages\":[]}", &r), 0);
  CHECK(r.load_only);
  serve_req_free(&r);
}

static void refused(void) {
  const enum serve_api C = SERVE_OAI_CHAT, O = SERVE_OLLAMA_CHAT, G = SERVE_OLLAMA_GENERATE;
  bad(C, "", "invalid JSON");
  bad(C, "{\"messages\":[", "invalid JSON");
  bad(C, "{} x", "invalid JSON");
  bad(C, "{\"a\":1,\"a\":2}", "invalid JSON");
  bad(C, "[1]", "must be a JSON object");
  bad(C, "{}", "'messages' is required");
  bad(C, "{\"messages\":[]}", "'messages' is empty");
  bad(C, "{\"messages\":{}}", "'messages' must be an array");
  bad(C, "{\"messages\":[1]}", "'messages[0]' must be an object");
  bad(C, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "'messages[0].role'");
  bad(C, "{\"messages\":[{\"content\":\"x\"}]}", "'messages[0].role'");
  bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "'messages[0].content'");
  bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
      "'messages[0].content[0]'");
  bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
      "'messages[0].content[0].text'");
  bad(C, "{\"model\":5,\"messages\":[]}", "'model' must be a string");
  bad(C, "{\"messages\":[],\"temperature\":\"hot\"}", "'temperature' must be a number");
  bad(C, "{\"messages\":[],\"temperature\":-1}", "'temperature' must be a number in [0, 100]");
  bad(C, "{\"messages\":[],\"top_p\":1.5}", "'top_p'");
  bad(C, "{\"messages\":[],\"top_k\":2.5}", "'top_k' must be an integer");
  bad(C, "{\"messages\":[],\"max_tokens\":0}", "'max_tokens'");
  bad(C, "{\"messages\":[],\"max_tokens\":1e3}", "'max_tokens' must be an integer");
  bad(C, "{\"messages\":[],\"stream\":1}", "'stream' must be true or false");
  bad(C, "{\"messages\":[],\"stream_options\":[]}", "'stream_options' must be an object");
  bad(C, "{\"messages\":[],\"n\":2}", "'n': only 1");
  bad(C, "{\"messages\":[],\"n\":\"1\"}", "'n': only 1");
  bad(C, "{\"messages\":[],\"stop\":5}", "'stop' must be a string or an array");
  bad(C, "{\"messages\":[],\"stop\":[\"\"]}", "'stop[0]' must be a non-empty string");
  bad(C, "{\"messages\":[],\"stop\":[1,2]}", "'stop[0]'");
  bad(C,
      "{\"messages\":[],\"stop\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
      "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
      "at most 16");
  bad(C, "{\"messages\":[],\"tools\":[{}]}", "'tools': tools are not supported");
  bad(C, "{\"messages\":[],\"logprobs\":true}", "'logprobs'");
  bad(C, "{\"messages\":[],\"response_format\":{\"type\":\"json_object\"}}", "'response_format'");
  bad(SERVE_OAI_COMPLETION, "{\"prompt\":[1,2]}", "'prompt' must be a string");
  bad(SERVE_OAI_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", "'echo'");
  bad(O, "{\"messages\":[],\"options\":[]}", "'options' must be an object");
  bad(O, "{\"messages\":[],\"options\":{\"num_ctx\":0}}", "'options.num_ctx'");
  bad(O, "{\"messages\":[],\"options\":{\"num_predict\":-3}}", "'options.num_predict'");
  bad(O, "{\"messages\":[],\"options\":{\"top_k\":-1}}", "'options.top_k'");
  bad(O, "{\"messages\":[],\"format\":\"json\"}", "'format'");
  bad(O, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"images\":[\"AA\"]}]}",
      "messages[0]: 'images'");
  bad(G, "{\"prompt\":\"x\",\"context\":[1,2]}", "'context'");
  bad(G, "{\"prompt\":\"x\",\"template\":\"{{.Prompt}}\"}", "'template'");
  bad(G, "{\"prompt\":5}", "'prompt' must be a string");
  bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", "invalid JSON");
  bad(C, "{\"messages\":\"\xff\"}", "invalid JSON");
  char deep[400];
  int d = 0;
  d += snprintf(deep, sizeof deep, "{\"messages\":[],\"x\":");
  for (int i = 0; i < 70; i++) deep[d++] = '[';
  for (int i = 0; i < 70; i++) deep[d++] = ']';
  deep[d++] = '}', deep[d] = 0;
  bad(C, deep, "nests deeper than 64");
}

static void gen_params(void) {
  struct serve_req r;
  struct serve_defaults d = {
      .n_ctx = 100, .n_predict = -1, .sp = {.temp = 0.7f, .top_k = 20, .top_p = 0.8f, .seed = 3}};
  struct gen_params gp = {0};
  CHECK_EQ(parse(SERVE_OLLAMA_CHAT,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"options\":{\"num_ctx\":"
                 "50,\"top_k\":4,\"stop\":[\"s\"]}}",
                 &r),
           0);
  CHECK_EQ(serve_req_gen_params(&r, 10, &d, 99, &gp), 0);
  CHECK_EQ(gp.n_predict, 40); // up to num_ctx
  CHECK(gp.sp.temp == 0.7f && gp.sp.top_k == 4 && gp.sp.top_p == 0.8f);
  CHECK_EQ(gp.sp.seed, 99); // no seed, no --seed: the random one
  CHECK(gp.n_stop == 1 && !strcmp(gp.stop[0], "s"));
  CHECK_EQ(serve_req_gen_params(&r, 50, &d, 99, &gp), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "the prompt has 50 tokens but the context is 50 tokens"));
  CHECK(strstr(ferry_errmsg(), "num_ctx"));
  CHECK_EQ(serve_req_gen_params(&r, 0, &d, 99, &gp), -EINVAL);
  serve_req_free(&r);
  CHECK_EQ(parse(SERVE_OAI_CHAT,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"max_tokens\":500}", &r),
           0);
  d.seed_fixed = true;
  CHECK_EQ(serve_req_gen_params(&r, 30, &d, 99, &gp), 0);
  CHECK_EQ(gp.n_predict, 70); // capped by the context
  CHECK_EQ(gp.sp.seed, 3);    // --seed
  CHECK_EQ(serve_req_gen_params(&r, 100, &d, 99, &gp), -EINVAL);
  CHECK(strstr(ferry_errmsg(), "ferry serve -c"));
  serve_req_free(&r);
}

int main(void) {
  openai_chat();
  openai_completion();
  ollama();
  refused();
  gen_params();
  CHECK_DONE();
}
