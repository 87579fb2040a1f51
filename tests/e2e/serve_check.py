#!/usr/bin/env python3
"""tests/e2e/serve_check.py: reads what `ferry serve` answered (headers and bodies that the
serve tests saved with curl -D/-o as DIR/NAME.head and DIR/NAME.body), parses it strictly by
its content type -- JSON, server-sent events (OpenAI streams) or newline-delimited JSON
(Ollama streams) -- and evaluates a Python expression over the responses.

    serve_check.py DIR 'EXPR'    exit 0 if EXPR is true, else print the responses it used

In EXPR, r('NAME') is a response: .status, .type, .json (one JSON body), .events (the
decoded stream objects), .text (the generated text, however it was delivered), .final (the
last stream object or the body), .err (the error message of either API's error shape);
run('NAME') is the --json report of a `ferry run` saved as DIR/NAME.json.
A malformed stream (an event that is not `data: JSON`, no `[DONE]`, an NDJSON line that is
not JSON, `done` anywhere but last) fails the check by itself.
"""
import json
import os
import sys

DIR = sys.argv[1]
used = []


class Resp:
    def __init__(self, name):
        self.name = name
        head = open(os.path.join(DIR, name + ".head"), "rb").read().decode("latin-1")
        lines = [l for l in head.split("\r\n") if l]
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.type = self.headers.get("content-type", "")
        self.raw = open(os.path.join(DIR, name + ".body"), "rb").read().decode("utf-8")
        self.json, self.events = None, None
        if self.type.startswith("text/event-stream"):
            self.events = self._sse()
        elif self.type.startswith("application/x-ndjson"):
            self.events = self._ndjson()
        elif self.type.startswith("application/json"):
            self.json = json.loads(self.raw)

    def _sse(self):
        assert self.raw.endswith("\n\n"), "SSE stream does not end with a blank line"
        blocks = self.raw[:-2].split("\n\n")
        assert blocks[-1] == "data: [DONE]" or "error" in blocks[-1], "no data: [DONE] at the end"
        out = []
        for b in blocks:
            assert b.startswith("data: ") and "\n" not in b, "bad SSE event %r" % b[:80]
            if b != "data: [DONE]":
                out.append(json.loads(b[6:]))
        return out

    def _ndjson(self):
        assert self.raw.endswith("\n"), "NDJSON stream does not end with a newline"
        out = [json.loads(l) for l in self.raw[:-1].split("\n")]
        for i, o in enumerate(out):
            if "error" not in o:
                assert o["done"] == (i == len(out) - 1), "done is not only on the last line"
        return out

    @property
    def final(self):
        return self.events[-1] if self.events is not None else self.json

    @property
    def err(self):
        e = self.final.get("error") if isinstance(self.final, dict) else None
        return e.get("message") if isinstance(e, dict) else e

    @property
    def text(self):
        objs = self.events if self.events is not None else [self.json]
        s = ""
        for o in objs:
            if "choices" in o:
                for c in o["choices"]:
                    if "message" in c:
                        s += c["message"]["content"] or ""
                    elif "delta" in c:
                        s += c["delta"].get("content") or ""
                    else:
                        s += c.get("text") or ""
            elif "message" in o:
                s += o["message"]["content"]
            elif "response" in o:
                s += o["response"]
        return s


def r(name):
    resp = Resp(name)
    used.append(resp)
    return resp


def run(name):
    """What `ferry run --json DIR/NAME.json` generated (its text, U+FFFD as the server writes)."""
    return json.load(open(os.path.join(DIR, name + ".json")))


def main():
    expr = sys.argv[2]
    try:
        ok = eval("(" + expr + ")")
    except Exception as e:  # a malformed answer is a failed check
        ok = False
        print("serve_check: %s: %s" % (type(e).__name__, e))
    if not ok:
        print("serve_check: false: " + expr)
        for u in used:
            print("  %s: %d %s: %s" % (u.name, u.status, u.type, u.raw[:600]))
        sys.exit(1)


main()
