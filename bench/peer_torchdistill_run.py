"""torchdistill side of the peer benchmark; runs in the peer venv and never imports `app`.

    /tmp/venv-torchdistill/bin/python bench/peer_torchdistill_run.py --data DIR/peer.npz --seed 0 \
        --epochs 30 --batch-size 128 --lr 0.003 --temperature 4 --alpha 0.5 [--handwritten]

Follows torchdistill's own recipe (examples/torchvision/image_classification.py and the sample KD
config configs/sample/cifar10/kd/*.yaml): a `get_distillation_box` built from the config tree the
YAML would give (RandomSampler DataLoader, `forward_batch_only`, frozen teacher, WeightedSumLoss
over one KDLoss term), then per epoch `pre_epoch_process`, the example's `train_one_epoch`
(MetricLogger, `forward_process`, `post_forward_process`), the example's `evaluate` on the
validation loader, `save_ckpt` when the accuracy improves, and `post_epoch_process`. torchdistill
1.1.5 runs the teacher on every batch: its `get_teacher_output` has no output cache (v1.1.4's
`cache_output` is gone), so the JSON line counts the teacher's forwards during training.
`--handwritten` runs bench/handwritten_kd.py's loop instead (a control for the torch build).

The teacher and student are rebuilt here layer by layer as Distillery's zoo builds them
(app/training/models.py: trunk Sequential + heads ModuleDict), so the state dicts exported by the
driver load with strict=True. Prints one JSON line on stdout.
"""

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler, TensorDataset

import torchdistill
from torchdistill.common.main_util import save_ckpt, set_seed
from torchdistill.core.distillation import get_distillation_box
from torchdistill.misc.log import MetricLogger, SmoothedValue

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handwritten_kd as hw  # noqa: E402  (torch only: the same control loop in both venvs)


class GlobalAveragePool(nn.Module):
    """Average over the last `dims` axes: (batch, channels, *spatial) -> (batch, channels)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.axes = tuple(range(-dims, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.axes)


class SingleTaskNet(nn.Module):
    """Distillery's MultiTaskNet layout with one head; returns the head's logits (batch, classes)."""

    def __init__(self, trunk: nn.Sequential, width: int, head: Sequence[int], task: str,
                 classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        layers: list[nn.Module] = []
        for next_width in head:
            layers += [nn.Linear(width, next_width), nn.ReLU()]
            width = next_width
        layers.append(nn.Linear(width, classes))
        self.heads = nn.ModuleDict({task: nn.Sequential(*layers)})
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.task](self.trunk(x))


class ByTask(nn.Module):
    """Return {task: logits}, the output the hand-written loop (bench/handwritten_kd.py) expects."""

    def __init__(self, net: SingleTaskNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.net.task: self.net(x)}


def _dense(layers: list[nn.Module], width: int, widths: Sequence[int], dropout: float) -> int:
    for next_width in widths:
        layers += [nn.Linear(width, next_width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = next_width
    return width


def build(arch: dict, input_shape: Sequence[int], task: str, classes: int) -> SingleTaskNet:
    """Build the `mlp` or `cnn1d` zoo architecture exactly as app/training/models.py does."""
    layers: list[nn.Module] = []
    if arch["type"] == "mlp":
        layers.append(nn.Flatten())
        width = _dense(layers, math.prod(input_shape), arch["trunk"], arch["dropout"])
    elif arch["type"] == "cnn1d":
        shape = list(input_shape)
        if len(shape) == 1:  # (batch, length) -> (batch, 1, length)
            layers.append(nn.Unflatten(1, (1, shape[0])))
            shape = [1, *shape]
        width, length = shape
        k = arch["kernel_size"]
        for channels in arch["channels"]:
            layers += [nn.Conv1d(width, channels, k, padding=k // 2), nn.ReLU()]
            if length >= 2:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            width = channels
        layers.append(GlobalAveragePool(1))
        width = _dense(layers, width, arch["trunk"], arch["dropout"])
    else:
        raise ValueError(f"architecture {arch['type']!r} is not rebuilt on the peer side")
    return SingleTaskNet(nn.Sequential(*layers), width, arch["head"], task, classes)


def load_state(model: nn.Module, data: np.lib.npyio.NpzFile, prefix: str) -> nn.Module:
    """Load `prefix/<name>` arrays as the model's state dict (strict: same layout on both sides)."""
    state = {key[len(prefix) + 1:]: torch.from_numpy(data[key]) for key in data.files
             if key.startswith(prefix + "/")}
    model.load_state_dict(state, strict=True)
    return model


def train_config(args: argparse.Namespace) -> dict:
    """The `train:` tree of torchdistill's sample KD YAML, with this job's settings."""
    loader = {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
              "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": False}}
    return {
        "log_freq": 10**9, "num_epochs": args.epochs, "train_data_loader": loader,
        "val_data_loader": {"dataset_id": "test",
                            "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
                            "kwargs": {"batch_size": 1000, "num_workers": 0, "drop_last": False}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": args.lr, "weight_decay": 0.0}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output",
                "teacher_module_path": ".", "teacher_module_io": "output",
                "temperature": args.temperature,
                "alpha": 1.0 - args.alpha,  # torchdistill's alpha weighs the hard CE term
                "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }


def train_one_epoch(box, device: torch.device, epoch: int, log_freq: int) -> None:
    """The example script's train_one_epoch (torchdistill examples/torchvision)."""
    metric_logger = MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", SmoothedValue(window_size=1, fmt="{value}"))
    metric_logger.add_meter("img/s", SmoothedValue(window_size=10, fmt="{value}"))
    header = f"Epoch: [{epoch}]"
    for sample_batch, targets, supp_dict in metric_logger.log_every(box.train_data_loader, log_freq,
                                                                    header):
        start_time = time.time()
        sample_batch, targets = sample_batch.to(device), targets.to(device)
        loss = box.forward_process(sample_batch, targets, supp_dict)
        box.post_forward_process(loss=loss)
        metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
        metric_logger.meters["img/s"].update(sample_batch.shape[0] / (time.time() - start_time))
        if torch.isnan(loss) or torch.isinf(loss):
            raise ValueError(f"The training loop was broken due to loss = {loss}")


@torch.inference_mode()
def evaluate(model: nn.Module, data_loader, device: torch.device) -> float:
    """The example script's evaluate, top-1 only: accuracy in [0, 1]."""
    model.eval()
    correct = 0.0
    for x, y in data_loader:
        correct += (model(x.to(device)).argmax(1) == y.to(device)).sum(dtype=torch.float32).item()
    return correct / len(data_loader.dataset)


def handwritten(args: argparse.Namespace, teacher: SingleTaskNet, student: SingleTaskNet,
                x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor) -> None:
    """Time the hand-written KD loop on this venv's torch (teacher logits computed untimed)."""
    task = student.task
    soft = hw.teacher_logits(ByTask(teacher), x_train)
    cpu_started = time.process_time()
    seconds = hw.train_student(ByTask(student), x_train, {task: y_train}, soft, {task: "multiclass"},
                               None, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               temperature=args.temperature, alpha=args.alpha, seed=args.seed)
    cpu = time.process_time() - cpu_started
    print(json.dumps({"student_s": seconds, "student_cpu_s": cpu,
                      "acc": hw.accuracy(ByTask(student), x_test, y_test, task),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="npz written by bench/peer_torchdistill.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--temperature", type=float, required=True)
    parser.add_argument("--alpha", type=float, required=True, help="Distillery's: weight of the soft term")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--handwritten", action="store_true",
                        help="control: run bench/handwritten_kd.py's loop on this torch instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    data = np.load(args.data)
    meta = json.loads(str(data["meta"]))
    x_train, x_test = torch.from_numpy(data["x_train"]), torch.from_numpy(data["x_test"])
    y_train, y_test = torch.from_numpy(data["y_train"]), torch.from_numpy(data["y_test"])
    datasets = {"train": TensorDataset(x_train, y_train), "test": TensorDataset(x_test, y_test)}
    shape, task, classes = meta["input_shape"], meta["task"], meta["num_classes"]
    teacher = load_state(build(meta["teacher"], shape, task, classes), data, "teacher")
    student = load_state(build(meta["student"], shape, task, classes), data, f"student-init/{args.seed}")

    if args.handwritten:
        handwritten(args, teacher, student, x_train, y_train, x_test, y_test)
        return
    calls = [0]  # teacher forwards during training (one per batch: 1.1.5 has no output cache)
    set_seed(args.seed)  # the example's seeding: random, numpy, torch (RandomSampler draws from it)
    box = get_distillation_box(teacher, student, datasets, train_config(args), device, None, False, 1)
    teacher_acc = evaluate(teacher, box.val_data_loader, device)
    teacher.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    best, history = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        started, cpu_started = time.perf_counter(), time.process_time()
        for epoch in range(box.num_epochs):
            box.pre_epoch_process(epoch=epoch)
            train_one_epoch(box, device, epoch, log_freq=10**9)
            accuracy = evaluate(box.student_model, box.val_data_loader, device)
            history.append(accuracy)
            if accuracy > best:
                best = accuracy
                save_ckpt(box.student_model, box.optimizer, box.lr_scheduler, best, args,
                          f"{tmp}/student.pt")
            box.post_epoch_process()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    box.clean_modules()
    print(json.dumps({"student_s": seconds, "student_cpu_s": cpu, "acc": history[-1], "acc_best": best,
                      "teacher_acc": teacher_acc,
                      "teacher_forwards": calls[0],
                      "torch": torch.__version__, "torchdistill": torchdistill.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
