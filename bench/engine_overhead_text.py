"""Engine overhead, text case: the student stage of a transformer job vs a hand-written transformers loop.

    .venv/bin/python -m bench.engine_overhead_text [--reps 3] [--threads 1] [--epochs 3]

(a) `app.training.loop.train` in-process (the teacher trained once in a warm-up run; its outputs and
the token rows come from the caches after that), the student stage's seconds from results.json;
(b) by hand: a transformers BertModel of the same sizes (BertConfig), a Linear head per task on
the [CLS] state, AdamW, the Hinton KD loss of bench/handwritten_kd.py per task on the engine's own
training rows and the teacher's logits computed once (untimed), no evaluation or checkpoint.
Interleaved `--reps` times; medians, their ratio (a)/(b), and process CPU seconds beside them.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.checkpoint import read_finished
from app.training.files import LocalFileResolver
from app.training.loop import train
from app.training.models import build_model
from app.training.spec import JobSpec
from app.training.stage_data import load_job_data
from app.training.text import load_text_data
from bench import handwritten_kd as hw
from bench.engine_overhead import StudentCpu

SIZES = {"layers": 2, "hidden_size": 64, "attention_heads": 2, "intermediate_size": 256}
SPEC: dict[str, Any] = {
    "name": "overhead-text",
    "dataset": {"builtin": "clothing-reviews", "max_length": 64, "vocab_size": 8000,
                "max_train_rows": 2000, "max_test_rows": 500},
    "tasks": [{"name": "department", "kind": "multiclass", "num_classes": 6},
              {"name": "recommended", "kind": "binary"}],
    "teachers": [{"name": "t", "tasks": ["department", "recommended"], "source": {"train": {
        "arch": {"type": "transformer", "layers": 2, "hidden_size": 128, "attention_heads": 4,
                 "intermediate_size": 256}, "epochs": 1, "batch_size": 32, "lr": 0.001}}}],
    "student": {"type": "transformer", **SIZES, "dropout": 0.0},
    "distillation": {"terms": ["soft"], "temperature": 2.0, "alpha": 0.5},
    "training": {"epochs": 3, "batch_size": 32, "lr": 0.001, "seed": 0, "device": "cpu"},
    "baseline": False, "export": []}


class HandBert(nn.Module):
    """BertModel + a Linear per task on the [CLS] state: what a user would write by hand."""

    def __init__(self, vocab: int, length: int, outputs: dict[str, int]) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=vocab, hidden_size=SIZES["hidden_size"],
                            num_hidden_layers=SIZES["layers"], num_attention_heads=SIZES["attention_heads"],
                            intermediate_size=SIZES["intermediate_size"], max_position_embeddings=length,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.heads = nn.ModuleDict({t: nn.Linear(SIZES["hidden_size"], n) for t, n in outputs.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ids, mask = x[:, 0].long(), x[:, 1].long()
        cls = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return {t: head(cls) for t, head in self.heads.items()}


def engine_seconds(spec: dict[str, Any], root: Path, rep: int) -> tuple[float, float]:
    cpu = StudentCpu()
    results = train(JobSpec.model_validate(spec), root / f"job-{rep}", cache_dir=root / "cache",
                    callbacks=cpu).results
    return next(s["seconds"] for s in results["stages"] if s["name"] == "student"), cpu.ended - cpu.started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads(json.dumps(SPEC))
    spec["training"]["epochs"] = args.epochs
    job = JobSpec.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine_seconds(spec, root, -1)  # warm-up: the teacher, the token and output caches
        data = load_job_data(job.dataset, tasks=list(job.tasks), seed=job.training.seed, resolver=None,
                             device=torch.device("cpu"), loaded=load_text_data(
                                 job, resolver=LocalFileResolver(), cache_dir=root / "cache"))
        teacher = build_model(job.teachers[0].source.train.arch, input_shape=data.input_shape,
                              tasks=list(job.tasks), text=data.text)
        teacher.load_state_dict(read_finished(root / "job--1")["teacher:t"]["model"])
        soft = hw.teacher_logits(teacher, data.x_train, batch=256)
        kinds = {t.name: t.kind for t in job.tasks}
        outputs = {t.name: t.num_classes or 1 for t in job.tasks}
        a, b, cpu_a, cpu_b = [], [], [], []
        for rep in range(args.reps):  # interleaved
            sa, ca = engine_seconds(spec, root, rep)
            torch.manual_seed(job.training.seed)
            student = HandBert(data.text.vocab_size, data.input_shape[1], outputs)
            started = time.process_time()
            sb = hw.train_student(student, data.x_train, data.y_train, soft, kinds, None,
                                  epochs=args.epochs, batch_size=job.training.batch_size,
                                  lr=job.training.lr, temperature=2.0, alpha=0.5, seed=0)
            cb = time.process_time() - started
            a.append(sa); b.append(sb); cpu_a.append(ca); cpu_b.append(cb)
            print(f"text rep {rep}: engine {sa:.2f}s  hand {sb:.2f}s  ratio {sa / sb:.3f}  "
                  f"(CPU {ca:.2f}s / {cb:.2f}s = {ca / cb:.3f})", flush=True)
    report = {"engine_s": a, "hand_s": b, "ratio_of_medians": statistics.median(a) / statistics.median(b),
              "cpu_ratio_of_medians": statistics.median(cpu_a) / statistics.median(cpu_b),
              "min_of_reps_ratio": min(a) / min(b), "rows": len(data.x_train), "epochs": args.epochs}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
