"""Load and faults for ``hftool serve`` on loopback, against a plain FastAPI app that calls
``pipeline("text-generation")`` per request (the baseline, measured in the same run).

A GPT-2 with random weights built from a config (4 layers, 256 wide, a byte-level BPE trained on the embedded
corpus; or ``--model FOLDER``) is served by ``hftool serve`` in a subprocess. For 16 and 64 concurrent clients a
fixed number of greedy requests (half streamed, half not, over 8 distinct prompts) is sent; every response is
checked against the text ``model.generate`` gives for its prompt alone (zero errors, zero mixed-up answers), and
p50/p95 latency and generated tokens/s are reported. The baseline serves the same requests (not streamed: it has
no streaming), level by level right after hftool serve, with the 1-minute load average of the machine beside
each row (on a shared machine the numbers move with it). Then the faults: clients that hang up mid-stream (the
server counts each cancelled once and stays healthy), a burst past ``--max-queue`` (503s with Retry-After, then
recovery), SIGTERM under load (in-flight requests finish or get a clean error; exit code 0 within the grace period).

Everything is bounded: a fixed request count, per-request timeouts and ``--time-limit`` for the whole run.

    python benchmarks/bench_serve.py --quick    # a smoke run: a smaller model, few requests (about a minute)
    python benchmarks/bench_serve.py            # the full run (the README table)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PROMPTS = ["The meaning of life is", "Attention lets every token", "In the beginning", "A robot must obey",
           "Python is a programming language", "The weather today", "Once upon a time", "Transformers read"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_VERBOSITY": "error"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(folder: Path, quick: bool) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hftool.data.builtin_corpus import python_docs_documents
    from hftool.data.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(python_docs_documents()[: 300 if quick else 2000], "byte-bpe",
                                vocab_size=2000 if quick else 8000)
    torch.manual_seed(0)
    width = 128 if quick else 256
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=width, n_layer=2 if quick else 4,
                        n_head=4, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def expected_texts(folder: Path, max_tokens: int) -> dict[str, str]:
    """Each prompt's greedy continuation from ``model.generate`` alone: what every response must say."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            row = model.generate(ids, do_sample=False, max_new_tokens=max_tokens,
                                 pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        out[prompt] = tokenizer.decode(row, skip_special_tokens=True)
    return out


# ---- the baseline: a plain FastAPI app, pipeline per request -----------------------------------------------

def baseline_server(folder: str, port: int) -> None:
    import threading

    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-generation", model=folder, device="cpu")
    lock = threading.Lock()  # one pipeline call at a time: the tokenizer refuses concurrent use
    app = FastAPI()

    @app.post("/v1/completions")
    def complete(body: dict):
        with lock:
            result = pipe(body["prompt"], max_new_tokens=body["max_tokens"], do_sample=False,
                          return_full_text=False, pad_token_id=pipe.tokenizer.eos_token_id)
        return {"choices": [{"text": result[0]["generated_text"]}], "usage": None}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- clients -------------------------------------------------------------------------------------------

async def one_request(client, url: str, prompt: str, max_tokens: int, stream: bool) -> tuple[str, int | None]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if not stream:
        response = await client.post(url, json=body)
        response.raise_for_status()
        data = response.json()
        return data["choices"][0]["text"], (data.get("usage") or {}).get("completion_tokens")
    body["stream_options"] = {"include_usage": True}
    text, tokens = [], None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                text.append(choice["text"])
    return "".join(text), tokens


async def load(base: str, clients: int, requests: int, max_tokens: int, expected: dict, streaming: bool,
               tokenizer) -> dict:
    """``clients`` coroutines share ``requests`` requests; every answer is checked against its prompt's text."""
    import httpx

    queue = list(range(requests))
    latencies, errors, wrong, tokens = [], [], 0, 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker():
            nonlocal wrong, tokens
            while queue:
                i = queue.pop()
                prompt = PROMPTS[i % len(PROMPTS)]
                started = time.perf_counter()
                try:
                    text, count = await one_request(client, base + "/v1/completions", prompt, max_tokens,
                                                    streaming and i % 2 == 0)
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latencies.append(time.perf_counter() - started)
                wrong += text != expected[prompt]
                tokens += count if count is not None else len(tokenizer(text)["input_ids"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"clients": clients, "requests": requests, "errors": len(errors), "wrong": wrong,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p95_s": latencies[max(0, int(0.95 * len(latencies)) - 1)] if latencies else None,
            "tokens_per_s": tokens / wall, "wall_s": wall, "first_errors": errors[:3]}


def start(cmd: list[str], port: int, deadline: float) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server did not start: {' '.join(cmd)}\n{proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code in (200, 404):
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("server did not start before the time limit")


def stop(proc: subprocess.Popen, grace: float = 30) -> tuple[int | None, float]:
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return code, time.perf_counter() - started


def serve_cmd(folder: Path, port: int, max_queue: int, batch: int) -> list[str]:
    return [sys.executable, "-m", "hftool", "serve", "--model", str(folder), "--port", str(port),
            "--max-batch-size", str(batch), "--max-queue", str(max_queue)]


# ---- faults --------------------------------------------------------------------------------------------

def counter(text: str, name: str) -> int:
    return next(int(float(line.split()[1])) for line in text.splitlines() if line.startswith(name + " "))


async def hang_ups(base: str, count: int, max_tokens: int) -> dict:
    """``count`` streaming clients hang up after their first line; the cancel counter must grow by ``count``."""
    import httpx

    async with httpx.AsyncClient(timeout=60) as client:
        before = counter((await client.get(base + "/metrics")).text, "hftool_cancelled_total")

        async def hang_up():
            body = {"prompt": PROMPTS[0], "max_tokens": max_tokens, "stream": True, "temperature": 0}
            async with client.stream("POST", base + "/v1/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    break

        await asyncio.gather(*(hang_up() for _ in range(count)))
        await asyncio.sleep(2)
        cancelled = counter((await client.get(base + "/metrics")).text, "hftool_cancelled_total") - before
        healthy = (await client.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": 2})).status_code
    return {"hung_up": count, "cancelled_by_server": cancelled, "next_request_status": healthy}


async def burst(base: str, count: int, max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=count + 4)) as client:
        body = {"prompt": PROMPTS[1], "max_tokens": max_tokens, "temperature": 0}
        responses = await asyncio.gather(*(client.post(base + "/v1/completions", json=body) for _ in range(count)))
        refused = [r for r in responses if r.status_code == 503]
        after = await client.post(base + "/v1/completions", json=body)
    return {"sent": count, "ok": sum(r.status_code == 200 for r in responses), "503": len(refused),
            "retry_after_on_all_503": all(r.headers.get("retry-after") for r in refused),
            "other": sum(r.status_code not in (200, 503) for r in responses), "recovered": after.status_code == 200}


async def sigterm_under_load(proc, base: str, clients: int, max_tokens: int, expected: dict) -> dict:
    import httpx

    outcomes = {"finished_correct": 0, "finished_wrong": 0, "clean_error": 0}

    async with httpx.AsyncClient(timeout=120) as client:
        async def ask(i):
            prompt = PROMPTS[i % len(PROMPTS)]
            try:
                text, _ = await one_request(client, base + "/v1/completions", prompt, max_tokens, i % 2 == 0)
                outcomes["finished_correct" if text == expected[prompt] else "finished_wrong"] += 1
            except (httpx.HTTPStatusError, httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                outcomes["clean_error"] += 1

        tasks = [asyncio.create_task(ask(i)) for i in range(clients)]
        await asyncio.sleep(0.5)
        code, seconds = await asyncio.to_thread(stop, proc, 60)
        await asyncio.gather(*tasks)
    return {**outcomes, "exit_code": code, "exit_s": round(seconds, 2)}


# ---- main ----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small model, few requests")
    parser.add_argument("--model", help="a causal-LM folder instead of the random GPT-2 built here")
    parser.add_argument("--requests", type=int, help="requests per load level (default 256; 32 with --quick)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=1500, help="seconds for the whole run, at most")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        return baseline_server(args.model, args.baseline_server)
    deadline = time.time() + args.time_limit
    requests = args.requests or (32 if args.quick else 256)
    levels = [16] if args.quick else [16, 64]
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else build_model(Path(tmp) / "model", args.quick)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        expected = expected_texts(folder, args.max_tokens)
        results: dict = {"machine": machine(), "model": str(args.model or "random GPT-2 (built here)"),
                         "max_tokens": args.max_tokens, "load": []}

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start(serve_cmd(folder, port, max_queue=256, batch=16), port, deadline)
        other = free_port()
        baseline = start([sys.executable, __file__, "--model", str(folder), "--baseline-server", str(other)], other,
                         deadline)
        # Both servers are up; each level measures one then the other (the idle one costs no CPU), so a change
        # in the load of a shared machine reaches both alike. The load average goes in every row.
        servers = (("hftool serve", base, True), ("FastAPI + pipeline", f"http://127.0.0.1:{other}", False))
        for _, url, streaming in servers:  # first requests pay one-time costs (allocations, lazy imports)
            asyncio.run(load(url, 4, 8, args.max_tokens, expected, streaming, tokenizer))
        for clients in levels:
            for name, url, streaming in servers:
                load_avg = round(os.getloadavg()[0], 2)
                row = asyncio.run(load(url, clients, requests, args.max_tokens, expected, streaming, tokenizer))
                results["load"].append({"server": name, **row, "load_avg_1m": load_avg})
                print(json.dumps(results["load"][-1]), flush=True)
        stop(baseline)
        results["hang_ups"] = asyncio.run(hang_ups(base, 8, 200))
        print(json.dumps(results["hang_ups"]), flush=True)
        results["sigterm"] = asyncio.run(sigterm_under_load(proc, base, 16, args.max_tokens, expected))
        print(json.dumps(results["sigterm"]), flush=True)

        port = free_port()
        proc = start(serve_cmd(folder, port, max_queue=4, batch=4), port, deadline)
        results["burst"] = asyncio.run(burst(f"http://127.0.0.1:{port}", 40, args.max_tokens))
        print(json.dumps(results["burst"]), flush=True)
        stop(proc)
    print_table(results)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


def machine() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def print_table(results: dict) -> None:
    print(f"\n{results['machine']}; {results['model']}; {results['max_tokens']} new tokens per request\n")
    print("| server | clients | requests | errors | wrong | p50 s | p95 s | tokens/s | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["load"]:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['wrong']} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['tokens_per_s']:.0f} | {r['load_avg_1m']} |")
    print(f"\nhang-ups: {results['hang_ups']}\nburst past --max-queue: {results['burst']}\n"
          f"SIGTERM under load: {results['sigterm']}")


if __name__ == "__main__":
    main()
