"""Serving load test: the Serve endpoint at several concurrencies against sequential unbatched `generate`
on the same model, prompts and token budget, measured in the same run. Prints one JSON line.

    .venv/bin/python benchmarks/serve_load.py                         # SmolLM2-135M-Instruct, 1/8/32 clients
    .venv/bin/python benchmarks/serve_load.py --model runs/quantize-int8/model --concurrency 8
    .venv/bin/python benchmarks/serve_load.py --model runs/export-onnx/model --concurrency 1 8
    .venv/bin/python benchmarks/serve_load.py --engine hf vllm --concurrency 1 8     # both engines, one run

Per level: requests/s, output tokens/s, TTFT and per-token latency p50/p90/p99 (streamed, official openai
client), failures. Baseline: HF `generate` one request after another (batch 1, greedy) in this process with
the same thread count as the engine replica. Target: at 8 clients >= 3x the baseline's tokens/s.

    .venv/bin/python benchmarks/serve_load.py --mixed                  # short requests beside 2,000-token prompts

--mixed: 8 clients send short requests (3 each, 16 tokens) alone, then beside one client sending ~2,000-token
prompts back to back, against several engines in one run: chunked prefill at each `--prefill-tokens` (256
is the default engine) and whole-prompt prefill (the engine before chunking). Reported: the short requests'
latency and TTFT p50/p99 unloaded and loaded, their ratio (goal: loaded p99 <= 3x unloaded, no 504), every
HTTP status, and the long prompts' own latency (what chunking costs them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = [
    "Where is my order LH12345678? It has been a week.", "How do I return a lamp that arrived broken?",
    "Can I change the delivery address of my order?", "Do you ship to Canada, and how long does it take?",
    "我的订单什么时候发货？", "退货需要多长时间到账？", "发票怎么开？", "沙发可以换颜色吗？",
    "What payment methods do you accept?", "My coupon code does not work at checkout.",
    "How do I clean a linen sofa cover?", "Is the oak table solid wood or veneer?",
    "快递显示已签收但我没收到。", "可以修改订单里的商品数量吗？", "你们的保修期是多久？", "怎么联系人工客服？",
]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def baseline(model_spec: str, n: int, max_tokens: int, threads: int) -> dict:
    import torch

    from app.chat import render_prompt
    from app.models import load_policy
    from app.onnx import greedy
    torch.set_num_threads(threads)
    model, tok = load_policy(model_spec)
    tokens, start = 0, time.perf_counter()
    for p in (PROMPTS * 8)[:n]:
        ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": p}])])
        if hasattr(model, "generate"):
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            tokens += out.shape[1] - ids.shape[1]
        else:  # an ONNX export (app/onnx.py): the same greedy loop, one request after another
            tokens += len(greedy(model, ids[0].tolist(), max_tokens, {tok.eos_token_id}))
    seconds = time.perf_counter() - start
    return {"requests": n, "tokens_per_s": round(tokens / seconds, 1), "requests_per_s": round(n / seconds, 3)}


async def load(url: str, concurrency: int, n: int, max_tokens: int) -> dict:
    import httpx
    import openai
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600,
                                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 4)))
    gate = asyncio.Semaphore(concurrency)
    ttft, per_token, tokens, failures = [], [], 0, 0

    async def one(prompt: str):
        nonlocal tokens, failures
        async with gate:
            start, first, last, count = time.perf_counter(), None, None, 0
            try:
                stream = await client.chat.completions.create(
                    model="raypost", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                    temperature=0, stream=True, stream_options={"include_usage": True})
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        last = time.perf_counter()
                    if chunk.usage:
                        count = chunk.usage.completion_tokens
            except openai.APIError:
                failures += 1
                return
            tokens += count
            if first:
                ttft.append((first - start) * 1000)
                if count > 1:
                    per_token.append((last - first) * 1000 / (count - 1))

    start = time.perf_counter()
    await asyncio.gather(*[one(p) for p in (PROMPTS * 8)[:n]])
    seconds = time.perf_counter() - start
    return {"requests": n, "requests_per_s": round(n / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "ttft_ms": {"p50": pct(ttft, .5), "p90": pct(ttft, .9), "p99": pct(ttft, .99)},
            "per_token_ms": {"p50": pct(per_token, .5), "p90": pct(per_token, .9), "p99": pct(per_token, .99)},
            "failures": failures}


async def mixed(url: str, long_prompt: str, loaded: bool, clients: int = 8, rounds: int = 3) -> dict:
    """Short requests from `clients` clients (each `rounds` in a row), with or without one client sending
    `long_prompt` back to back until they are done: the short requests' latency and TTFT, every status."""
    import httpx
    latency, ttft, status, long_latency = [], [], {}, []
    done = asyncio.Event()

    async def request(client, content: str, max_tokens: int) -> tuple[float, float | None]:
        start, first = time.perf_counter(), None
        async with client.stream("POST", f"{url}/v1/chat/completions", json={
                "model": "raypost", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True}) as r:
            status[r.status_code] = status.get(r.status_code, 0) + 1
            async for line in r.aiter_lines():
                if first is None and line.startswith("data: {") and '"content"' in line:
                    first = time.perf_counter()
        return (time.perf_counter() - start) * 1000, first and (first - start) * 1000

    async def short(client, k: int):
        for i in range(rounds):
            took, first = await request(client, PROMPTS[(k * rounds + i) % len(PROMPTS)], 16)
            latency.append(took)
            if first:
                ttft.append(first)

    async def long(client):
        while not done.is_set():
            long_latency.append((await request(client, long_prompt, 8))[0])

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        background = asyncio.create_task(long(client)) if loaded else None
        if loaded:
            await asyncio.sleep(0.5)  # the long prompt is being prefilled when the short requests arrive
        await asyncio.gather(*[short(client, k) for k in range(clients)])
        done.set()
        if background:
            await background
    return {"latency_ms": {"p50": pct(latency, .5), "p99": pct(latency, .99)},
            "ttft_ms": {"p50": pct(ttft, .5), "p99": pct(ttft, .99)}, "statuses": status,
            **({"long_prompt_latency_ms": {"p50": pct(long_latency, .5), "n": len(long_latency)}} if loaded else {})}


def mixed_load(args) -> dict:
    """Both engines on one Serve instance (the idle one costs nothing): unloaded, then loaded."""
    from ray import serve

    from app.cluster import init_ray
    from app.models import load_tokenizer
    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    tok = load_tokenizer(args.model)
    unit = "Order LH12345678 was packed on Monday, left the warehouse on Tuesday and reached the hub. "
    long_prompt = unit * (2000 // len(tok(unit, add_special_tokens=False)["input_ids"]))
    init_ray(num_cpus=2 * args.threads)  # two replicas' reservations; one engine runs at a time
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    out = {}
    for name, chunk in [(f"chunked_{c}", c) for c in args.prefill_tokens] + [("whole_prompt", 1_000_000)]:
        serve.run(build_app(ServeArgs(model=args.model, cpus_per_replica=args.threads, max_batch_size=args.batch,
                                      prefill_tokens=chunk)), name=name, route_prefix=f"/{name}")
        url = f"http://127.0.0.1:{port}/{name}"
        asyncio.run(mixed(url, "warm up", False, rounds=1))
        alone, beside = asyncio.run(mixed(url, long_prompt, False)), asyncio.run(mixed(url, long_prompt, True))
        out[name] = {"unloaded": alone, "loaded": beside,
                     "p99_latency_loaded_vs_unloaded": round(beside["latency_ms"]["p99"] / alone["latency_ms"]["p99"], 2),
                     "p99_ttft_loaded_vs_unloaded": round(beside["ttft_ms"]["p99"] / alone["ttft_ms"]["p99"], 2)}
        serve.delete(name)
    serve.shutdown()
    return {"benchmark": "serve_mixed_load", "model": args.model, "threads": args.threads,
            "long_prompt_tokens": len(tok(long_prompt, add_special_tokens=False)["input_ids"]), "short_clients": 8,
            **out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--engine", nargs="+", default=["hf"], choices=["hf", "vllm"], help="engines, one after another")
    ap.add_argument("--mixed", action="store_true", help="short requests beside 2,000-token prompts")
    ap.add_argument("--prefill-tokens", type=int, nargs="+", default=[64, 128, 256], help="--mixed: chunk sizes")
    args = ap.parse_args()
    if args.mixed:
        print(json.dumps(mixed_load(args)))
        return

    from ray import serve

    from app.cluster import init_ray
    from app.serve.ingress import build_app
    from app.serve.config import ServeArgs
    base = baseline(args.model, 8, args.max_tokens, args.threads)
    init_ray(num_cpus=args.threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    engines = {}
    for engine in args.engine:
        serve.run(build_app(ServeArgs(model=args.model, engine=engine, cpus_per_replica=args.threads,
                                      max_batch_size=args.batch,
                                      limits={"max_ongoing_requests": max(args.concurrency) + 4})),
                  name=engine, route_prefix=f"/{engine}")
        url = f"http://127.0.0.1:{port}/{engine}"
        asyncio.run(load(url, 2, 2, 8))  # warm-up
        levels = engines[engine] = {}
        for c in args.concurrency:
            levels[str(c)] = asyncio.run(load(url, c, max(8, 2 * c), args.max_tokens))
            levels[str(c)]["speedup_vs_baseline"] = round(levels[str(c)]["tokens_per_s"] / base["tokens_per_s"], 2)
        serve.delete(engine)
    serve.shutdown()
    print(json.dumps({"benchmark": "serve_load", "model": args.model, "max_tokens": args.max_tokens,
                      "threads": args.threads, "max_batch_size": args.batch, "baseline_sequential_generate": base,
                      **({"serve": engines["hf"]} if list(engines) == ["hf"] else {"serve": engines})}))


if __name__ == "__main__":
    main()
