"""A real HTTP server on 127.0.0.1 speaking OpenAI's /v1/chat/completions (plain and SSE-streamed),
with injected faults keyed by the request number in the user message ("Request 17.").

Faults (per request id, on the first attempt unless noted):
  1: 429 with Retry-After 0.2        2: HTTP 500                    3: hangs past the client timeout
  4: malformed JSON content (always) 5: schema-invalid items        6: exact and near duplicates of request 0
  7: items failing the filters        others: k valid, distinct items
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mvboost.prompts.taxonomy import COLOURS, MATERIALS, all_categories

CATS = [c for _, c in all_categories()]


def valid_items(rid: int, k: int) -> list[dict]:
    out = []
    for j in range(k):
        n = rid * k + j
        cat = CATS[(n * 37) % len(CATS)]
        col, mat = COLOURS[n % len(COLOURS)], MATERIALS[(n // len(COLOURS)) % len(MATERIALS)]
        out.append({"name": f"{col} {mat} {cat}",
                    "description": f"a {col} {mat} {cat} with a distinctive shape, studio product shot",
                    "category": cat})
    return out


def items_for(rid: int, k: int) -> list[dict] | str:
    if rid == 4:
        return '{"objects": [{"name": "broken'  # truncated JSON
    if rid == 5:
        good = valid_items(rid, k)
        good[0].pop("description")
        good[1]["extra"] = 1
        good[2]["name"] = 42
        return good
    if rid == 6:
        base = valid_items(0, k)
        dup = [dict(base[0]), dict(base[1], description=base[1]["description"].upper() + "!")]
        near = [dict(base[2], description=base[2]["description"].replace("a ", "a small ", 1))]
        return dup + near + valid_items(rid, k)[3:]
    if rid == 7:
        bad = [{"name": "statue", "description": "a nude marble statue of a goddess on a plinth", "category": "statue"},
               {"name": "scene", "description": "a cozy kitchen scene with many pots and pans", "category": "room"},
               {"name": "mug", "description": "a red mug", "category": "kitchenware"},
               {"name": "junk", "description": "%%%% #### 1234 5678 @@@@ !!!! ???? ****", "category": "junk"}]
        return bad + valid_items(rid, k)[4:]
    return valid_items(rid, k)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops bursts of new connections (SYN retries)


HOSTILE_MODES = ("garbage", "not_completion", "not_json", "wrong_schema", "huge", "error_cycle", "trickle")


class FakeOpenAI:
    """``mode``: None (the faults above), or a hostile mode applied to every request:
    garbage (200, content not JSON), not_completion (200, a JSON body that is no completion),
    not_json (200, an HTML body, as a misconfigured proxy answers),
    wrong_schema (items missing fields), huge (5 MB content), error_cycle (500 and 429 alternating),
    trickle (a valid answer sent one byte every 0.2 s), repeat (valid items, but the same ones every time).
    """

    def __init__(self, hang_s: float = 3.0, mode: str | None = None):
        self.mode = mode
        self.hang_s = hang_s
        self.attempts: dict[int, int] = {}
        self.requests = 0
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, headers=None, ctype="application/json"):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, json.dumps({"error": {"message": "not found"}}))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                rid = int(re.search(r"Request (\d+)\.", user).group(1))
                k = int(re.search(r"Propose (\d+) ", user).group(1))
                with fake.lock:
                    fake.requests += 1
                    attempt = fake.attempts[rid] = fake.attempts.get(rid, 0) + 1
                mode = fake.mode
                if mode == "error_cycle":
                    return (self._send(500, json.dumps({"error": {"message": "boom"}})) if fake.requests % 2 else
                            self._send(429, json.dumps({"error": {"message": "slow"}}), {"Retry-After": "0"}))
                if mode == "not_completion":
                    return self._send(200, json.dumps({"hello": "world"}))
                if mode == "not_json":
                    return self._send(200, "<html><body>502 upstream unavailable</body></html>", ctype="text/html")
                if mode in ("garbage", "wrong_schema", "huge"):
                    content = {"garbage": "I am not JSON at all, sorry.",
                               "wrong_schema": json.dumps({"objects": [{"title": "x"}] * k}),
                               "huge": "x" * 5_000_000}[mode]
                    resp = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": len(content) // 4,
                                      "total_tokens": 100 + len(content) // 4}}
                    return self._send(200, json.dumps(resp))
                if mode == "trickle":
                    data = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                       "choices": [{"index": 0, "message": {"role": "assistant", "content": json.dumps(
                                           {"objects": valid_items(rid, k)})}, "finish_reason": "stop"}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.2)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return None
                if mode == "repeat":
                    attempt = 2  # no injected faults: only the repetition
                if attempt == 1 and rid == 1:
                    return self._send(429, json.dumps({"error": {"message": "slow down"}}), {"Retry-After": "0.2"})
                if attempt == 1 and rid == 2:
                    return self._send(500, json.dumps({"error": {"message": "boom"}}))
                if attempt == 1 and rid == 3:
                    time.sleep(fake.hang_s)
                    return self._send(200, "{}")
                items = valid_items(0, k) if mode == "repeat" else items_for(rid, k)
                content = items if isinstance(items, str) else json.dumps({"objects": items})
                usage = {"prompt_tokens": len(user) // 4, "completion_tokens": len(content) // 4,
                         "total_tokens": len(user) // 4 + len(content) // 4}
                if body.get("stream"):
                    chunks = [content[i:i + 40] for i in range(0, len(content), 40)]
                    events = []
                    for i, c in enumerate(chunks):
                        events.append({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                       "model": body["model"], "choices": [
                                           {"index": 0, "delta": {"role": "assistant", "content": c} if i == 0
                                            else {"content": c}, "finish_reason": None}]})
                    events.append({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                   "model": body["model"], "choices": [{"index": 0, "delta": {},
                                                                        "finish_reason": "stop"}]})
                    events.append({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                                   "model": body["model"], "choices": [], "usage": usage})
                    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                    return self._send(200, sse, ctype="text/event-stream")
                resp = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": "stop"}], "usage": usage}
                return self._send(200, json.dumps(resp))

        return Handler
