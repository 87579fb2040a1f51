// engine/serve.h: `ferry serve` — an OpenAI- and Ollama-compatible HTTP server over one
// loaded session. The calling thread becomes the engine thread (it owns the model and runs
// one generation at a time); libmicrohttpd threads (one per connection) parse requests,
// queue them and write responses. Returns after SIGINT/SIGTERM: the current token is
// finished, waiting requests get 503, connections are closed.
#pragma once
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine/session.h"

struct serve_opts {
  const char *host;      // numeric address or name to listen on (default 127.0.0.1)
  int port;              // 0: any free port (printed on stderr)
  const char *api_key;   // NULL: no authentication
  int queue;             // requests that may wait beyond the one generating
  const char *alias;     // model name served; NULL: the file name without .gguf
  uint64_t max_body;     // request bodies larger than this get 400
  bool prompt_cache;     // reuse the longest common prefix of the last conversation
  bool n_predict_set;    // -n was given: the default max tokens per request (else: context)
  bool seed_set;         // --seed was given: the seed of requests without one (else: random)
  const cpu_set_t *cpus; // affinity for the HTTP threads (the engine's pool pins this thread)
  int listen_fd;         // set by serve_listen
  bool ipv6;
};

// Opens the listening socket for so->host and so->port (before the model is loaded, so a
// port in use fails at once); sets so->listen_fd and the bound so->port. 0, or a negative
// code with a message (unknown host, address in use).
int serve_listen(struct serve_opts *so);

// Serves on so->listen_fd (which it closes) until a signal; 0 after a clean shutdown, or a
// negative code with a message when the server cannot start.
int serve_run(struct session *s, const struct run_opts *o, const struct serve_opts *so);
