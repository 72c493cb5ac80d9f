"""Requests per second of `adapt serve` on a real run folder: the real uvicorn server on a free 127.0.0.1 port
(adapt.serve.serve_in_thread), queried by `--concurrency` httpx clients at once, each request one input.

An encoder/seq2seq run is queried on POST /predict; a causal LM on POST /v1/chat/completions (its tokenizer has a
chat template) or /v1/completions, with `--max-tokens` new tokens. Before timing, one answer is checked to
equal `adapt predict`'s for the same input (the same code path). Prints one summary line and, with --json, a JSON
object.

    python benchmarks/serve_check.py --model runs/sentiment --requests 200 --concurrency 16
    python benchmarks/serve_check.py --model embedded:smollm2 --recipe clm-instruct --requests 16 --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

TEXTS = ["a gripping, beautifully acted film", "dull and far too long", "the best thing I have seen this year",
         "a mess from start to finish", "charming, funny and warm", "I walked out halfway through"]
PROMPTS = ["Write one sentence about the sea.", "Name three primary colours.", "What is 12 times 12?",
           "Give a synonym for happy."]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="run folder, plain HF folder (with --recipe) or embedded:NAME")
    parser.add_argument("--recipe", default=None, help="task recipe for a folder without recipe.yaml")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16, help="language models: new tokens per request")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()

    import datasets
    import httpx

    datasets.disable_progress_bars()  # as `adapt serve` does
    from adapt.runner import finite_records, json_value, predict_stream
    from adapt.serve import load_service, serve_in_thread

    t0 = time.perf_counter()
    service = load_service(args.model, args.recipe, [f"task_options.max_new_tokens={args.max_tokens}"]
                           if args.recipe or args.model.startswith("embedded:") else [])
    load_s = time.perf_counter() - t0
    chat = service.generates_text and bool(service.task.tokenizer.chat_template)
    if service.generates_text:
        path = "/v1/chat/completions" if chat else "/v1/completions"

        def body(i: int) -> dict:
            prompt = PROMPTS[i % len(PROMPTS)]
            payload = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
            return {"model": service.name, "max_tokens": args.max_tokens, "temperature": 0, **payload}
    else:
        path = "/predict"

        def body(i: int) -> dict:
            return {"inputs": [TEXTS[i % len(TEXTS)]]}

    with serve_in_thread(service) as url:
        # the served answer equals the predict code path's for the same input (run here before timing)
        first = httpx.post(f"{url}{path}", json=body(0), timeout=600).json()
        if path == "/predict":
            direct = json.loads(json.dumps(list(finite_records(predict_stream(service.task, service.model, [TEXTS[0]]),
                                                               service.name)), default=json_value))
            assert first["predictions"] == direct, (first, direct)
        latencies: list[float] = []

        async def fire() -> list[int]:
            limit = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                async def one(i: int) -> int:
                    async with limit:
                        start = time.perf_counter()
                        response = await client.post(path, json=body(i))
                        latencies.append(time.perf_counter() - start)
                        return response.status_code

                return await asyncio.gather(*(one(i) for i in range(args.requests)))

        start = time.perf_counter()
        statuses = asyncio.run(fire())
        wall = time.perf_counter() - start
    ok = sum(status == 200 for status in statuses)
    latencies.sort()
    figures = {"model": args.model, "task": service.task.name, "endpoint": path, "requests": args.requests,
               "answered_200": ok, "concurrency": args.concurrency, "seconds": round(wall, 3),
               "requests_per_s": round(args.requests / wall, 2),
               "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
               "latency_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
               "model_load_s": round(load_s, 1)}
    if service.generates_text:
        figures["max_tokens"] = args.max_tokens
        figures["first_answer"] = (first["choices"][0].get("message", {}).get("content")
                                   if chat else first["choices"][0]["text"])
    print(f"{path} on {args.model} ({service.task.name}): {ok}/{args.requests} answered, "
          f"{figures['requests_per_s']} requests/s at concurrency {args.concurrency} "
          f"(p50 {figures['latency_p50_ms']} ms, p95 {figures['latency_p95_ms']} ms)")
    if args.json:
        print(json.dumps(figures, ensure_ascii=False))
    return 0 if ok == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
