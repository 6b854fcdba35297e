"""Load and faults for ``hftool serve`` on loopback, against the Hugging Face stack's own OpenAI server
(``transformers serve``, with and without ``--continuous-batching``) and a plain FastAPI app that calls
``pipeline("text-generation")`` per request, each measured in the same run, one server at a time.

Models with random weights are built from configs, with a byte-level BPE (vocabulary 8k) trained on the embedded
corpus: ``tiny`` (GPT-2, 4 layers x 256, ``hftool pretrain``'s default), ``gpt2-small`` (12 x 768) and
``bloom-560m`` (24 x 1024); or ``--model FOLDER``. Two workloads: ``uniform`` (every request ``--max-tokens``,
over 8 short prompts) and ``mixed`` (max_tokens drawn with a fixed seed from 8 to 256, prompts of 3 to about 60
words). For 16 and 64 concurrent clients a fixed number of greedy requests (half streamed where the server
streams) is sent; every answer is checked against the text ``model.generate`` gives for its prompt alone (zero
errors, zero mixed-up answers), and tokens/s, p50/p95 latency and p50 time to first token (streamed requests)
are reported, with the 1-minute load average of the machine beside each row (on a shared machine the numbers
move with it). Then the faults, on the first model: clients that hang up mid-stream (the server counts each
cancelled once and stays healthy), a burst past ``--max-queue`` (503s with Retry-After, then recovery), SIGTERM
under load (in-flight requests finish or get a clean error; exit code 0 within the grace period).

Everything is bounded: a fixed request count, per-request timeouts and ``--time-limit`` for the whole run.
On a shared host whose speed drifts, ``--rounds N`` runs the servers N times in turn (each round in the reverse
order of the last) and reports each row's median and the median of the per-round ratios to the baseline.

    python benchmarks/bench_serve.py --quick    # a smoke run: a 2-layer model, few requests (a few minutes)
    python benchmarks/bench_serve.py            # the full run (the README table; hours on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PROMPTS = ["The meaning of life is", "Attention lets every token", "In the beginning", "A robot must obey",
           "Python is a programming language", "The weather today", "Once upon a time", "Transformers read"]
# Longer prompts for the mixed workload: sentences of the embedded corpus cut to 3..60 words (see mixed_prompts).
MIXED_SPREAD = (8, 16, 32, 64, 128, 256)  # max_tokens of the mixed workload, drawn with a fixed seed
SEED = 1234
SHAPES = {  # name: (architecture, config fields)
    "tiny": ("gpt2", {"n_layer": 4, "n_embd": 256, "n_head": 4}),
    "gpt2-small": ("gpt2", {"n_layer": 12, "n_embd": 768, "n_head": 12}),
    "bloom-560m": ("bloom", {"n_layer": 24, "hidden_size": 1024, "n_head": 16}),
    "quick": ("gpt2", {"n_layer": 2, "n_embd": 128, "n_head": 4}),
    "quick-bloom": ("bloom", {"n_layer": 2, "hidden_size": 128, "n_head": 4}),
}
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "TRANSFORMERS_VERBOSITY": "error"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_model(folder: Path, shape: str, quick: bool) -> Path:
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GPT2Config, GPT2LMHeadModel

    from hftool.data.builtin_corpus import python_docs_documents
    from hftool.data.tokenizer_training import train_tokenizer

    tokenizer = train_tokenizer(python_docs_documents()[: 300 if quick else 2000], "byte-bpe",
                                vocab_size=2000 if quick else 8000)
    torch.manual_seed(0)
    architecture, fields = SHAPES[shape]
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_positions=512, **ids, **fields))
    else:
        model = BloomForCausalLM(BloomConfig(pad_token_id=tokenizer.pad_token_id, **ids, **fields))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mixed_prompts(count: int = 8) -> list[str]:
    """Prompts of varied length (3 to about 60 words) cut from the embedded corpus, the same every run."""
    from hftool.data.builtin_corpus import python_docs_documents

    words = " ".join(python_docs_documents()[:20]).split()
    draw = random.Random(SEED)
    prompts = []
    for length in (3, 5, 8, 12, 20, 30, 45, 60)[:count]:
        start = draw.randrange(len(words) - length)
        prompts.append(" ".join(words[start:start + length]))
    return prompts


def workload(name: str, requests: int, max_tokens: int) -> list[tuple[str, int]]:
    """The (prompt, max_tokens) of every request: ``uniform`` cycles the short prompts at ``max_tokens``;
    ``mixed`` draws prompt and max_tokens with a fixed seed."""
    if name == "uniform":
        return [(PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(requests)]
    draw, prompts = random.Random(SEED), mixed_prompts()
    return [(draw.choice(prompts), draw.choice(MIXED_SPREAD)) for _ in range(requests)]


def continuations(folder: Path, prompts: set[str], longest: int, dtype: str = "float32") -> dict[str, list[int]]:
    """Each prompt's greedy continuation from ``model.generate`` alone, ``longest`` tokens (or to end of text):
    a request for m tokens must answer its first m."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    out = {}
    for prompt in sorted(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            row = model.generate(ids, do_sample=False, max_new_tokens=longest,
                                 pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        out[prompt] = row
    return out


def expected_texts(folder: Path, requests: list[tuple[str, int]], dtype: str = "float32"
                   ) -> dict[tuple[str, int], str]:
    """The text every (prompt, max_tokens) must get (in bfloat16, rounding that depends on the batch can
    change a greedy token: such answers count as wrong, and are reported)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = continuations(folder, {p for p, _ in requests}, max(m for _, m in requests), dtype)
    return {(p, m): tokenizer.decode(rows[p][:m], skip_special_tokens=True) for p, m in set(requests)}


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

async def one_request(client, url: str, prompt: str, max_tokens: int, stream: bool, model: str | None = None
                      ) -> tuple[str, int | None, float | None]:
    """The answer's text, its token count when the server says, and the seconds to its first text (streamed)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if model:
        body["model"] = model
    started = time.perf_counter()
    if not stream:
        response = await client.post(url, json=body)
        response.raise_for_status()
        data = response.json()
        return data["choices"][0]["text"], (data.get("usage") or {}).get("completion_tokens"), None
    body["stream_options"] = {"include_usage": True}
    text, tokens, first = [], None, None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if choice.get("text") and first is None:
                    first = time.perf_counter() - started
                text.append(choice.get("text") or "")
    return "".join(text), tokens, first


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[max(0, int(q * len(values) + 0.5) - 1)] if values else None


async def load(base: str, clients: int, requests: list[tuple[str, int]], expected: dict, streaming: bool,
               tokenizer, model: str | None = None) -> dict:
    """``clients`` coroutines share ``requests``; every answer is checked against its prompt's text."""
    import httpx

    queue = list(range(len(requests)))[::-1]
    latencies, firsts, errors, wrong, tokens = [], [], [], 0, 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        async def worker():
            nonlocal wrong, tokens
            while queue:
                i = queue.pop()
                prompt, max_tokens = requests[i]
                started = time.perf_counter()
                try:
                    text, count, first = await one_request(client, base + "/v1/completions", prompt, max_tokens,
                                                           streaming and i % 2 == 0, model)
                except Exception as exc:  # counted and reported, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                latencies.append(time.perf_counter() - started)
                if first is not None:
                    firsts.append(first)
                wrong += text != expected[(prompt, max_tokens)]
                tokens += count if count is not None else len(tokenizer(text)["input_ids"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(requests), "errors": len(errors), "wrong": wrong,
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95),
            "ttft_p50_s": percentile(firsts, 0.5), "tokens_per_s": tokens / wall, "wall_s": wall,
            "first_errors": errors[:3]}


def start(cmd: list[str], port: int, deadline: float, required: bool = True) -> subprocess.Popen | None:
    """The server, once it answers on ``port``; a baseline that cannot start is None (reported), hftool exits."""
    import httpx

    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=log, text=True)
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            message = f"server did not start: {' '.join(cmd)}\n{log.read()[-2000:]}"
            if required:
                sys.exit(message)
            print(message, file=sys.stderr)
            return None
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


def serve_cmd(folder: Path, port: int, max_queue: int, batch: int, flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "hftool", "serve", "--model", str(folder), "--port", str(port),
            "--max-batch-size", str(batch), "--max-queue", str(max_queue), *flags]


def transformers_serve_cmd(folder: Path, port: int, continuous: bool, dtype: str = "float32") -> list[str]:
    """``transformers serve`` pinned to the folder, on the CPU (its own defaults otherwise)."""
    cli = Path(sys.executable).with_name("transformers")
    return [str(cli), "serve", str(folder), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu",
            "--log-level", "warning", "--dtype", dtype, *(["--continuous-batching"] if continuous else [])]


def server_commands(folder: Path, port: int, flags: tuple[str, ...] = (), dtype: str = "float32"
                    ) -> dict[str, tuple[list[str], bool, str | None]]:
    """Every server of the comparison: its command, whether half its requests stream, the model field."""
    return {
        "hftool serve": (serve_cmd(folder, port, max_queue=256, batch=64, flags=("--dtype", dtype, *flags)),
                         True, None),
        "transformers serve --continuous-batching": (transformers_serve_cmd(folder, port, True, dtype), True,
                                                     str(folder)),
        "transformers serve": (transformers_serve_cmd(folder, port, False, dtype), True, str(folder)),
        "FastAPI + pipeline": ([sys.executable, __file__, "--model", str(folder), "--baseline-server", str(port)],
                               False, None),
    }


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
                text, _, _ = await one_request(client, base + "/v1/completions", prompt, max_tokens, i % 2 == 0)
                outcomes["finished_correct" if text == expected[(prompt, max_tokens)] else "finished_wrong"] += 1
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
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2-layer GPT-2 and BLOOM, 16 clients, few requests, every server")
    parser.add_argument("--model", help="a causal-LM folder instead of the random models built here")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)} (default: tiny,gpt2-small,"
                                         "bloom-560m; quick,quick-bloom with --quick)")
    parser.add_argument("--servers", help="comma-separated names to run (default: all four)")
    parser.add_argument("--workloads", default="uniform,mixed")
    parser.add_argument("--hftool-flags", default="", help="more flags for hftool serve, e.g. '--threads 2'")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights of both servers and of the reference answers (not the pipeline server)")
    parser.add_argument("--clients", help="comma-separated levels (default 16,64; 16 with --quick)")
    parser.add_argument("--requests", type=int, help="requests per level (default 128; 16 with --quick)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of the uniform workload")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the servers this many times in turn; medians and per-round ratios")
    parser.add_argument("--time-limit", type=float, default=6 * 3600, help="seconds for the whole run, at most")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--baseline-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        return baseline_server(args.model, args.baseline_server)
    deadline = time.time() + args.time_limit
    count = args.requests or (16 if args.quick else 128)
    levels = [int(c) for c in (args.clients or ("16" if args.quick else "16,64")).split(",")]
    shapes = (args.shapes or ("quick,quick-bloom" if args.quick else "tiny,gpt2-small,bloom-560m")).split(",")
    if args.model:
        shapes = [args.model]
    from transformers import AutoTokenizer

    results: dict = {"machine": machine(), "max_tokens": args.max_tokens, "dtype": args.dtype, "load": []}
    with tempfile.TemporaryDirectory() as tmp:
        for number, shape in enumerate(shapes):
            folder = Path(shape) if args.model else build_model(Path(tmp) / shape, shape, args.quick)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            workloads = {name: workload(name, count, args.max_tokens) for name in args.workloads.split(",")}
            expected = expected_texts(folder, [r for requests in workloads.values() for r in requests]
                                      + [(p, args.max_tokens) for p in PROMPTS], args.dtype)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            flags = tuple(shlex.split(args.hftool_flags))
            servers = [(name, spec) for name, spec in server_commands(folder, port, flags, args.dtype).items()
                       if not args.servers or name in args.servers.split(",")]
            for round_index in range(args.rounds):
                for name, (cmd, streaming, model) in servers if round_index % 2 == 0 else servers[::-1]:
                    proc = start(cmd, port, deadline, required=name == "hftool serve")
                    if proc is None:
                        results["load"].append({"shape": shape, "server": name, "errors": "did not start"})
                        continue
                    try:
                        measure(results, shape, name, base, levels, workloads, expected, streaming, tokenizer,
                                model, args.max_tokens, round_index)
                    except BaseException:
                        stop(proc)
                        raise
                    if name == "hftool serve" and number == 0 and round_index == 0:
                        faults(results, proc, base, folder, expected, args.max_tokens, deadline)
                    else:
                        stop(proc)
    print_table(results)
    if args.rounds > 1:
        results["medians"] = medians(results["load"])
        print_medians(results["medians"])
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


def faults(results: dict, proc, base: str, folder: Path, expected: dict, max_tokens: int, deadline: float) -> None:
    """Hang-ups and SIGTERM under load on the running hftool server (which this stops), then a burst past the
    queue of a second one."""
    results["hang_ups"] = asyncio.run(hang_ups(base, 8, 200))
    print(json.dumps(results["hang_ups"]), flush=True)
    uniform = {(p, max_tokens): expected[(p, max_tokens)] for p in PROMPTS}
    results["sigterm"] = asyncio.run(sigterm_under_load(proc, base, 16, max_tokens, uniform))
    print(json.dumps(results["sigterm"]), flush=True)
    burst_port = free_port()
    burst_proc = start(serve_cmd(folder, burst_port, max_queue=4, batch=4), burst_port, deadline)
    results["burst"] = asyncio.run(burst(f"http://127.0.0.1:{burst_port}", 40, max_tokens))
    print(json.dumps(results["burst"]), flush=True)
    stop(burst_proc)


def measure(results: dict, shape: str, name: str, base: str, levels: list[int], workloads: dict, expected: dict,
            streaming: bool, tokenizer, model: str | None, max_tokens: int, round_index: int = 0) -> None:
    """One server, every workload at every client level, after a warm-up (allocations, lazy imports)."""
    asyncio.run(load(base, 4, workload("uniform", 8, max_tokens), expected, streaming, tokenizer, model))
    for workload_name, requests in workloads.items():
        for clients in levels:
            load_avg = round(os.getloadavg()[0], 2)
            row = asyncio.run(load(base, clients, requests, expected, streaming, tokenizer, model))
            results["load"].append({"shape": shape, "workload": workload_name, "server": name, **row,
                                    "load_avg_1m": load_avg, "round": round_index})
            print(json.dumps(results["load"][-1]), flush=True)


def medians(rows: list[dict]) -> list[dict]:
    """Per shape, workload, clients and server: the median tokens/s, p50, p95 and TTFT over the rounds, and the
    median of hftool's per-round ratios to the baseline (the continuous-batching server where it ran, else plain
    ``transformers serve``), so that a host whose speed drifts between rounds moves both sides of a ratio."""
    import statistics

    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        if r["errors"] != "did not start":
            groups.setdefault((r["shape"], r["workload"], r["clients"]), {}).setdefault(r["server"], []).append(r)
    out = []
    for (shape, workload_name, clients), servers in groups.items():
        baseline = next((n for n in ("transformers serve --continuous-batching", "transformers serve")
                         if n in servers), None)
        for name, runs in servers.items():
            row = {"shape": shape, "workload": workload_name, "clients": clients, "server": name,
                   "rounds": len(runs), "errors": sum(r["errors"] for r in runs),
                   "wrong": sum(r["wrong"] for r in runs),
                   "tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs]}
            for key in ("tokens_per_s", "p50_s", "p95_s", "ttft_p50_s"):
                values = [r[key] for r in runs if r[key] is not None]
                row[f"median_{key}"] = statistics.median(values) if values else None
            if name == "hftool serve" and baseline and baseline != name:
                theirs = {r["round"]: r["tokens_per_s"] for r in servers[baseline]}
                ratios = [r["tokens_per_s"] / theirs[r["round"]] for r in runs if theirs.get(r["round"])]
                row["baseline"], row["ratios"] = baseline, [round(x, 2) for x in ratios]
                row["median_ratio"] = statistics.median(ratios) if ratios else None
            out.append(row)
    return out


def print_medians(rows: list[dict]) -> None:
    print("\nmedians over the rounds (ratio: median of hftool's per-round ratios to the baseline)\n")
    print("| model | traffic | clients | server | rounds | errors | wrong | tokens/s (each round) | median tokens/s "
          "| p50 s | p95 s | TTFT p50 s | ratio (each round) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (f"**{r['median_ratio']:.2f}×** ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
                 if r.get("median_ratio") else "-")
        numbers = " | ".join("-" if r[k] is None else f"{r[k]:.2f}"
                             for k in ("median_p50_s", "median_p95_s", "median_ttft_p50_s"))
        print(f"| {r['shape']} | {r['workload']} | {r['clients']} | {r['server']} | {r['rounds']} | {r['errors']} "
              f"| {r['wrong']} | {', '.join(f'{x:.0f}' for x in r['tokens_per_s'])} | "
              f"{r['median_tokens_per_s']:.0f} | {numbers} | {ratio} |")


def machine() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def print_table(results: dict) -> None:
    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print(f"\n{results['machine']}; uniform: {results['max_tokens']} new tokens per request; mixed: "
          f"max_tokens from {MIXED_SPREAD}\n")
    print("| model | traffic | server | clients | requests | errors | wrong | tokens/s | p50 s | p95 s | TTFT p50 s "
          "| load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["load"]:
        if r["errors"] == "did not start":
            print(f"| {r['shape']} | - | {r['server']} | - | - | did not start | - | - | - | - | - | - |")
            continue
        print(f"| {r['shape']} | {r['workload']} | {r['server']} | {r['clients']} | {r['requests']} | {r['errors']} "
              f"| {r['wrong']} | {r['tokens_per_s']:.0f} | {number(r['p50_s'], 2)} | {number(r['p95_s'], 2)} | "
              f"{number(r['ttft_p50_s'], 2)} | {r['load_avg_1m']} |")
    print(f"\nhang-ups: {results.get('hang_ups')}\nburst past --max-queue: {results.get('burst')}\n"
          f"SIGTERM under load: {results.get('sigterm')}")


if __name__ == "__main__":
    main()
