"""Drives a running `tessera launch` server with the real Triton client
(tritonclient[grpc] from PyPI) and the grpcio health-checking client.

Usage: triton_client_check.py ADDR MODEL EXPECTED_JSON
EXPECTED_JSON holds {"prompt": ..., "max_tokens": N, "text": ...}: the greedy
text `tessera generate` produced for that prompt. Exits non-zero on the first
failed check, printing what differed.
"""

import json
import queue
import sys
import threading
import time
from functools import partial

import grpc
import numpy as np
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

ADDR, MODEL, EXPECTED = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
client = tc.InferenceServerClient(ADDR)


def check(cond, what):
    if not cond:
        print("FAIL:", what, flush=True)
        sys.exit(1)
    print("ok:", what.split("\n")[0][:150], flush=True)


def inputs(prompt, params=None, stream=None, exclude=True, text_dtype="BYTES"):
    out = []
    t = tc.InferInput("text_input", [1], text_dtype)
    if text_dtype == "BYTES":
        t.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    else:
        t.set_data_from_numpy(np.array([1], dtype=np.int32))
    out.append(t)
    if params is not None:
        p = tc.InferInput("sampling_parameters", [1], "BYTES")
        raw = params if isinstance(params, str) else json.dumps(params)
        p.set_data_from_numpy(np.array([raw.encode()], dtype=object))
        out.append(p)
    if stream is not None:
        s = tc.InferInput("stream", [1], "BOOL")
        s.set_data_from_numpy(np.array([stream], dtype=bool))
        out.append(s)
    e = tc.InferInput("exclude_input_in_output", [1], "BOOL")
    e.set_data_from_numpy(np.array([exclude], dtype=bool))
    out.append(e)
    return out


def text_of(result):
    return result.as_numpy("text_output")[0].decode()


def greedy(n):
    return {"temperature": 0, "max_tokens": n}


def stream_texts(requests, cancel_after=None):
    """Send (id, inputs) requests on one ModelStreamInfer stream; return
    {id: text} and {id: final_flag_seen}, or the errors."""
    results = queue.Queue()

    def cb(result, error):
        results.put((result, error))

    c = tc.InferenceServerClient(ADDR)
    c.start_stream(callback=cb)
    for rid, inp in requests:
        c.async_stream_infer(MODEL, inp, request_id=rid, enable_empty_final_response=True)
    texts = {rid: "" for rid, _ in requests}
    finals, errors = {}, []
    chunks = 0
    while len(finals) + len(errors) < len(requests):
        result, error = results.get(timeout=120)
        if error is not None:
            errors.append(str(error))
            continue
        r = result.get_response()
        rid = r.id
        piece = result.as_numpy("text_output")
        if piece is not None and len(piece):
            texts[rid] += piece[0].decode()
        chunks += 1
        if r.parameters["triton_final_response"].bool_param:
            finals[rid] = True
        if cancel_after is not None and chunks >= cancel_after:
            c.stop_stream(cancel_requests=True)
            return texts, finals, errors, chunks
    c.stop_stream()
    return texts, finals, errors, chunks


def debug_stats():
    ch = grpc.insecure_channel(ADDR)
    raw = ch.unary_unary(
        "/tessera.debug.v1.Debug/Stats",
        request_serializer=lambda _: b"",
        response_deserializer=lambda b: b,
    )(None, timeout=5)
    # StatsReply { string json = 1; }: tag 0x0a, varint length, bytes.
    i, n, shift = 1, 0, 0
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            break
    return json.loads(raw[i : i + n].decode())


# ---- liveness, readiness, metadata, health
check(client.is_server_live(), "server is live")
check(client.is_server_ready(), "server is ready")
check(client.is_model_ready(MODEL), "model is ready")
md = client.get_model_metadata(MODEL)
check(md.name == MODEL, f"metadata names the model ({md.name})")
check({i.name for i in md.inputs} >= {"text_input", "stream", "sampling_parameters"}, "metadata lists the inputs")
check("text_output" in {o.name for o in md.outputs}, "metadata lists text_output")
health = health_pb2_grpc.HealthStub(grpc.insecure_channel(ADDR))
for svc in ["", "inference.GRPCInferenceService"]:
    st = health.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status
    check(st == health_pb2.HealthCheckResponse.SERVING, f"health of '{svc}' is SERVING")

# ---- server reflection lists the public services (what grpcurl uses)
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

services = set(ProtoReflectionDescriptorDatabase(grpc.insecure_channel(ADDR)).get_services())
check({"inference.GRPCInferenceService", "grpc.health.v1.Health", "tessera.debug.v1.Debug"} <= services,
      f"reflection lists the services: {sorted(services)}")
check(not any("worker" in s for s in services), "reflection does not advertise the private worker control plane")

# ---- ModelInfer, greedy: the text of `tessera generate`
prompt, n, want = EXPECTED["prompt"], EXPECTED["max_tokens"], EXPECTED["text"]
r = client.infer(MODEL, inputs(prompt, greedy(n)))
check(text_of(r) == want, f"ModelInfer text == tessera generate: {text_of(r)!r} vs {want!r}")
check(r.as_numpy("finish_reason")[0].decode() == "length", "finish_reason length")
check(int(r.as_numpy("num_output_tokens")[0]) == n, "num_output_tokens")
r = client.infer(MODEL, inputs(prompt, greedy(n), exclude=False))
check(text_of(r) == prompt + want, "without exclude_input_in_output the prompt is included")

# ---- seeded sampling (sampled on the worker): the text of `tessera generate` with the same values
sampled = EXPECTED["sampled"]
r = client.infer(MODEL, inputs(prompt, dict(sampled["params"], max_tokens=n)))
check(text_of(r) == sampled["text"], f"sampled ModelInfer text == tessera generate: {text_of(r)!r} vs {sampled['text']!r}")
texts, finals, errors, chunks = stream_texts([("p1", inputs(prompt, dict(sampled["params"], max_tokens=n), stream=True))])
check(not errors and texts["p1"] == sampled["text"], f"sampled stream == tessera generate: {texts['p1']!r} {errors}")

# ---- parameters as InferParameters instead of the JSON input
r = client.infer(MODEL, inputs(prompt), parameters={"max_tokens": n, "temperature": 0.0})
check(text_of(r) == want, "sampling values as request parameters")

# ---- ModelStreamInfer, streaming: chunks add up to the same text
texts, finals, errors, chunks = stream_texts([("s1", inputs(prompt, greedy(n), stream=True))])
check(not errors, f"stream has no errors {errors}")
check(texts["s1"] == want, f"streamed text == tessera generate: {texts['s1']!r}")
check(finals.get("s1") and chunks > 2, f"streamed in {chunks} responses, the last flagged final")

# ---- 16 concurrent greedy streams: each equals the same request run alone
prompts = [f"Question {i}: what is {i} plus {i * 3}? Answer:" for i in range(16)]
m = 24
alone = {}
for i, p in enumerate(prompts):
    alone[f"c{i}"] = text_of(client.infer(MODEL, inputs(p, greedy(m))))
texts, finals, errors, _ = stream_texts([(f"c{i}", inputs(p, greedy(m), stream=True)) for i, p in enumerate(prompts)])
check(not errors, f"16 concurrent streams without errors {errors}")
same = [k for k in alone if texts[k] == alone[k]]
check(len(same) == 16, f"16 concurrent streams each equal their lone run ({len(same)}/16); diffs: "
      + "; ".join(f"{k}: {texts[k]!r} vs {alone[k]!r}" for k in alone if texts[k] != alone[k]))

# ---- malformed requests: the right code and a message; the server keeps serving
def code_of(fn):
    try:
        fn()
    except InferenceServerException as e:
        return e.status(), e.message()
    return None, None

cases = [
    ("wrong datatype", lambda: client.infer(MODEL, inputs(prompt, greedy(4), text_dtype="INT32")), "StatusCode.INVALID_ARGUMENT", "BYTES"),
    ("missing text_input", lambda: client.infer(MODEL, inputs(prompt, greedy(4))[1:]), "StatusCode.INVALID_ARGUMENT", "text_input"),
    ("invalid JSON", lambda: client.infer(MODEL, inputs(prompt, "{max_tokens: 3")), "StatusCode.INVALID_ARGUMENT", "JSON"),
    ("negative max_tokens", lambda: client.infer(MODEL, inputs(prompt, {"max_tokens": -1})), "StatusCode.INVALID_ARGUMENT", "max_tokens"),
    ("max_tokens beyond the limit", lambda: client.infer(MODEL, inputs(prompt, {"max_tokens": 10**6})), "StatusCode.INVALID_ARGUMENT", "max_tokens"),
    ("bad temperature", lambda: client.infer(MODEL, inputs(prompt, {"temperature": -2})), "StatusCode.INVALID_ARGUMENT", "temperature"),
    ("empty prompt", lambda: client.infer(MODEL, inputs("", greedy(4))), "StatusCode.INVALID_ARGUMENT", "empty"),
    ("prompt longer than the context", lambda: client.infer(MODEL, inputs("hello " * 9000, greedy(4))), "StatusCode.INVALID_ARGUMENT", "context"),
    ("unknown model", lambda: client.infer("no-such-model", inputs(prompt, greedy(4))), "StatusCode.INVALID_ARGUMENT", "unknown model"),
]
for name, fn, want_code, word in cases:
    code, msg = code_of(fn)
    check(code == want_code and word in (msg or ""), f"{name}: {code} {msg!r}")
code, msg = code_of(lambda: client.infer(MODEL, inputs("x" * (10 << 20), greedy(4))))
check(code == "StatusCode.INVALID_ARGUMENT" and "context" in (msg or ""), f"10 MB prompt: {code} {(msg or '')[:100]!r}")
r = client.infer(MODEL, inputs(prompt, greedy(n)))
check(text_of(r) == want, "still serving after malformed requests")

# ---- cancelling a stream frees its KV blocks within a step
before = debug_stats()
check(before["kv_blocks_used"] == 0, f"no KV blocks in use when idle: {before}")
texts, finals, errors, chunks = stream_texts([("long", inputs("Tell me a long story.", dict(greedy(400), ignore_eos=True), stream=True))], cancel_after=3)
deadline = time.time() + 5
stats = debug_stats()
while (stats["kv_blocks_used"] or stats["running"]) and time.time() < deadline:
    time.sleep(0.05)
    stats = debug_stats()
check(stats["kv_blocks_used"] == 0 and stats["running"] == 0, f"cancelled stream freed its blocks: {stats}")
check(stats["cancelled"] >= 1, "the cancellation was counted")

# ---- back-pressure: more requests than batch + queue are refused, not hung
flood = [(f"f{i}", inputs("Count slowly:", dict(greedy(300), ignore_eos=True), stream=True)) for i in range(stats["max_batch"] + 80)]
results = queue.Queue()
c = tc.InferenceServerClient(ADDR)
c.start_stream(callback=lambda result, error: results.put((result, error)))
for rid, inp in flood:
    c.async_stream_infer(MODEL, inp, request_id=rid)
refused = 0
t0 = time.time()
while time.time() - t0 < 30 and refused == 0:
    try:
        r, e = results.get(timeout=1)
    except queue.Empty:
        continue
    if e is not None and "RESOURCE_EXHAUSTED" in str(e):
        refused += 1
c.stop_stream(cancel_requests=True)
check(refused > 0, "a full queue answers RESOURCE_EXHAUSTED")
deadline = time.time() + 10
stats = debug_stats()
while (stats["kv_blocks_used"] or stats["running"] or stats["queued"]) and time.time() < deadline:
    time.sleep(0.1)
    stats = debug_stats()
check(stats["kv_blocks_used"] == 0 and stats["queued"] == 0, f"the flood was cleaned up: {stats}")
r = client.infer(MODEL, inputs(prompt, greedy(n)))
check(text_of(r) == want, "still serving after the flood")
print("ALL CHECKS PASSED")
