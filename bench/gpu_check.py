"""Student-phase samples/s of one job on CPU and (when present) on CUDA, plus the GPU memory peak.

    bash bench/gpu_check.sh        (or: .venv/bin/python -m bench.gpu_check [--epochs 3])

Job: MNIST-1D, cnn1d teacher (1 epoch, only to have a teacher), MLP [100,100] student distilled on
a 50k generated transfer set. samples/s = student rows x epochs / student stage seconds
(results.json "stages"). On CUDA it runs the student phase four ways: `data_placement` device vs
stream (pinned-memory DataLoader) and `compile` off vs on, each with its GPU memory peak
(torch.cuda.max_memory_allocated). On a machine without CUDA the GPU part is skipped with a message.
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from app.training.loop import train
from app.training.spec import JobSpec
from bench.engine_overhead import MNIST1D


def student_samples_per_s(device: str, epochs: int, root: Path, *, placement: str = "auto",
                          compile: bool = False) -> tuple[float, dict]:
    """Run the job on `device`; return student samples/s and results.json."""
    spec = json.loads(json.dumps(MNIST1D))
    spec["training"].update(epochs=epochs, device=device, data_placement=placement, compile=compile)
    spec["teachers"][0]["source"]["train"]["epochs"] = 1
    workdir = root / f"{device}-{placement}-{'compiled' if compile else 'eager'}"
    results = train(JobSpec.model_validate(spec), workdir, cache_dir=root / f"cache-{device}").results
    stage = next(s for s in results["stages"] if s["name"].startswith("student"))
    rows = results.get("rows", {})
    n = rows.get("train", 0) + rows.get("transfer", 0) if rows else 0
    return n * stage["epochs"] / stage["seconds"], results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cpu, res = student_samples_per_s("cpu", args.epochs, root)
        print(f"cpu  ({torch.get_num_threads()} threads): student {cpu:,.0f} samples/s, "
              f"digit accuracy {res['tasks']['digit']['student']:.3f}", flush=True)
        if not torch.cuda.is_available():
            print("gpu: SKIPPED - torch.cuda.is_available() is False on this machine "
                  f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
            return
        for placement, compile in (("device", False), ("stream", False), ("device", True),
                                   ("stream", True)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            gpu, res = student_samples_per_s("cuda", args.epochs, root, placement=placement,
                                             compile=compile)
            peak = torch.cuda.max_memory_allocated() / 2**20
            print(f"cuda ({torch.cuda.get_device_name()}), {placement}, "
                  f"{'compiled' if compile else 'eager'}: student {gpu:,.0f} samples/s "
                  f"({gpu / cpu:.1f}x cpu), digit accuracy {res['tasks']['digit']['student']:.3f}, "
                  f"GPU memory peak {peak:.0f} MiB (torch.cuda.max_memory_allocated)", flush=True)


if __name__ == "__main__":
    main()
