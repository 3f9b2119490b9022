"""DDP without find_unused_parameters: a parameter the forward never uses must not hang or fail
the step (Ranks.step_loss gives every trainable parameter a zero-weight term)."""

import os
import socket
from datetime import timedelta
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from app.training.distributed import Ranks


class PartlyUsed(nn.Module):
    """A model whose `spare` layer takes no part in the training forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 2)

    def forward_features(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {"task": self.body(x)}, {}


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    model = PartlyUsed()
    ranks = Ranks(rank, 2)
    forward = ranks.training_forward(SimpleNamespace(model=model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ranks.shard(torch.arange(8), 2)  # one global batch of 4 rows: 2 per rank, weight 1 each
    torch.manual_seed(rank)
    for _ in range(3):  # a later step would fail ("expected to have finished reduction") if one hung
        logits, taps = forward(torch.randn(2, 4))
        loss = ranks.step_loss(logits["task"].pow(2).mean(), logits, taps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_a_parameter_the_forward_does_not_use_trains_under_two_ranks(tmp_path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "state")
    mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
    first, second = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    start = PartlyUsed().state_dict()
    for name in first:
        assert torch.equal(first[name], second[name]), name  # the ranks stayed in step
    assert not torch.equal(first["body.weight"], start["body.weight"])  # it trained
    assert torch.equal(first["spare.weight"], start["spare.weight"])  # a zero gradient: unchanged
    assert os.path.exists(f"{out}.1")
