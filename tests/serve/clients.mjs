// tests/serve/clients.mjs: the official `openai` and `ollama` npm clients (pinned in
// package-lock.json, installed by scripts/setup.sh) against a running `ferry serve`:
// listing, plain and streamed chat and completions, each client's error classes for our
// error bodies, and authentication. Run by tests/e2e/test_serve_clients.sh:
//   node clients.mjs URL MODEL API_KEY REF.json   (REF: `ferry run --json` of the question)
import { readFileSync } from "node:fs";
import OpenAI from "openai";
import { Ollama } from "ollama";

const [url, model, key, refPath] = process.argv.slice(2);
const ref = JSON.parse(readFileSync(refPath, "utf8"));
const question = "Tell me about ferries.";
const messages = [{ role: "user", content: question }];
let passes = 0;
let fails = 0;

async function check(name, fn) {
  try {
    await fn();
    passes++;
    console.log(`ok   ${name}`);
  } catch (e) {
    fails++;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function same(got, want, what) {
  assert(got === want, `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}
async function rejects(promise, cls, status) {
  try {
    await promise;
  } catch (e) {
    // the ollama package does not export ResponseError: that one is checked by name
    const ok = typeof cls === "string" ? e && e.name === cls : e instanceof cls;
    assert(ok, `threw ${e && e.constructor && e.constructor.name}: ${e.message}`);
    if (status) same(e.status ?? e.status_code, status, "status");
    return e;
  }
  throw new Error(`did not throw ${cls.name || cls}`);
}

// ---- OpenAI
const openai = new OpenAI({ baseURL: `${url}/v1`, apiKey: key, maxRetries: 0 });
const chatArgs = { model, messages, max_tokens: 16, temperature: 0 };

await check("openai: models.list has the alias", async () => {
  const ids = [];
  for await (const m of openai.models.list()) ids.push(m.id);
  same(ids.join(","), model, "models");
});
await check("openai: chat.completions.create, same text as ferry run", async () => {
  const r = await openai.chat.completions.create(chatArgs);
  same(r.choices[0].message.content, ref.text, "content");
  same(r.choices[0].message.role, "assistant", "role");
  same(r.usage.prompt_tokens, ref.n_prompt, "prompt_tokens");
  same(r.usage.completion_tokens, ref.n_generated, "completion_tokens");
});
await check("openai: streamed chat (for await), include_usage", async () => {
  const stream = await openai.chat.completions.create({
    ...chatArgs,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let usage = null;
  for await (const c of stream) {
    if (c.choices.length) {
      text += c.choices[0].delta.content ?? "";
      finish = c.choices[0].finish_reason ?? finish;
    }
    if (c.usage) usage = c.usage;
  }
  same(text, ref.text, "streamed text");
  assert(finish === "stop" || finish === "length", `finish_reason ${finish}`);
  same(usage.completion_tokens, ref.n_generated, "usage.completion_tokens");
});
await check("openai: chat.completions.stream helper, finalChatCompletion", async () => {
  const runner = openai.chat.completions.stream(chatArgs);
  const final = await runner.finalChatCompletion();
  same(final.choices[0].message.content, ref.text, "final content");
});
await check("openai: completions.create (raw prompt)", async () => {
  const r = await openai.completions.create({ model, prompt: question, max_tokens: 4, temperature: 0 });
  assert(typeof r.choices[0].text === "string", "text");
  same(r.usage.completion_tokens, 4, "completion_tokens");
});
await check("openai: unknown model -> NotFoundError", async () => {
  const e = await rejects(openai.chat.completions.create({ ...chatArgs, model: "gpt-4o" }), OpenAI.NotFoundError, 404);
  assert(e.message.includes("not found"), e.message);
});
await check("openai: n = 2 -> BadRequestError", async () => {
  await rejects(openai.chat.completions.create({ ...chatArgs, n: 2 }), OpenAI.BadRequestError, 400);
});
await check("openai: wrong API key -> AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL: `${url}/v1`, apiKey: "wrong", maxRetries: 0 });
  await rejects(bad.models.list(), OpenAI.AuthenticationError, 401);
});

// ---- Ollama (the key goes in a header, as for an Ollama behind an authenticating proxy)
const ollama = new Ollama({ host: url, headers: { Authorization: `Bearer ${key}` } });
const options = { temperature: 0, num_predict: 16 };

await check("ollama: list, ps, version, show", async () => {
  const l = await ollama.list();
  same(l.models[0].name, model, "list");
  same(l.models[0].details.format, "gguf", "format");
  const ps = await ollama.ps();
  same(ps.models[0].name, model, "ps");
  const v = await ollama.version();
  assert(typeof v.version === "string" && v.version.length, "version");
  const s = await ollama.show({ model });
  assert(s.details.family.startsWith("qwen3"), "show family");
});
await check("ollama: chat, same text as ferry run, timings", async () => {
  const r = await ollama.chat({ model, messages, options });
  same(r.message.content, ref.text, "content");
  assert(r.done && (r.done_reason === "stop" || r.done_reason === "length"), "done");
  same(r.eval_count, ref.n_generated, "eval_count");
  assert(r.total_duration > 0 && r.prompt_eval_duration > 0 && r.eval_duration > 0, "durations");
});
await check("ollama: streamed chat", async () => {
  let text = "";
  let last = null;
  for await (const part of await ollama.chat({ model: `${model}:latest`, messages, options, stream: true })) {
    text += part.message.content;
    last = part;
  }
  same(text, ref.text, "streamed text");
  assert(last.done && last.eval_count === ref.n_generated, "last part");
});
await check("ollama: generate, plain and streamed", async () => {
  const r = await ollama.generate({ model, prompt: question, options });
  same(r.response, ref.text, "response");
  let text = "";
  for await (const part of await ollama.generate({ model, prompt: question, options, stream: true })) text += part.response;
  same(text, ref.text, "streamed response");
});
await check("ollama: unknown model -> ResponseError 404 with the message", async () => {
  const e = await rejects(ollama.chat({ model: "llama3", messages, options }), "ResponseError", 404);
  assert(e.error.includes("not found"), `message: ${e.error}`);
});
await check("ollama: a bad option -> ResponseError 400 naming it", async () => {
  const e = await rejects(ollama.chat({ model, messages, options: { top_k: "many" } }), "ResponseError", 400);
  assert(e.error.includes("options.top_k"), `message: ${e.error}`);
});

console.log(`${passes} passed, ${fails} failed`);
process.exit(fails ? 1 : 0);
