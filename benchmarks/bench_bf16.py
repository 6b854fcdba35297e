"""How much slower bf16 is than float32 on this CPU, natively and with the kernels an AVX2-only CPU gets.

Each case runs in a fresh process; the emulated one sets ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2
before torch loads, which is what oneDNN and ATen dispatch to on a CPU without AVX-512 (e.g. AMD Zen 3), so bf16
matrix products there are converted to float32 inside the kernels instead of using avx512_bf16 / AMX.
Measures a 1024x1024 matrix product and one training step (forward, backward, AdamW) of a 4-layer GPT-2 shape
under autocast. The factor feeds hftool/environment.py's EMULATED_BF16_SLOWDOWN.

    python benchmarks/bench_bf16.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import RESULTS, child_env, describe, machine

CHILD = r"""
import json, sys, time, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
reps = int(sys.argv[1])

def best(fn, n):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

out = {}
for dtype in (torch.float32, torch.bfloat16):
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    out[f"matmul_{dtype}"] = best(lambda: a @ b, reps)
config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8000, n_positions=128)
ids = torch.randint(0, 8000, (8, 128))
for name, dtype in (("float32", None), ("bf16", torch.bfloat16)):
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters())
    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(ids, labels=ids).loss
        loss.backward(); opt.step(); opt.zero_grad()
    out[f"step_{name}"] = best(step, max(2, reps // 4))
print(json.dumps(out))
"""


def measure(env: dict, reps: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(reps)], env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions: checks the script, not a figure")
    args = parser.parse_args()
    reps = 3 if args.quick else 20
    emulated_env = {**child_env(), "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    record = {"machine": machine("float32 vs bf16"), "reps": reps, "cases": {}}
    print(describe(record["machine"]))
    for label, env in (("native", child_env()), ("emulated AVX2", emulated_env)):
        times = measure(env, reps)
        case = {"seconds": times,
                "matmul_bf16_over_fp32": times["matmul_torch.bfloat16"] / times["matmul_torch.float32"],
                "step_bf16_over_fp32": times["step_bf16"] / times["step_float32"]}
        record["cases"][label] = case
        print(f"{label:14s} 1024^2 matmul: bf16 {case['matmul_bf16_over_fp32']:6.2f}x the float32 time; "
              f"GPT-2 4-layer training step: bf16 {case['step_bf16_over_fp32']:6.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bf16-emulation.json"
    record["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["load_average"] = os.getloadavg()
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
