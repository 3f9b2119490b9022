"""The transformer KD terms against TinyBERT's formulas, computed by hand on small tensors."""

import pytest
import torch
from torch import nn

from app.training.errors import TrainingError
from app.training.losses_transformer import (
    attention_mse,
    hidden_mse,
    resolve_layer_map,
    uniform_layer_map,
)


def test_uniform_map_is_tinybert_g_of_m():
    # TinyBERT: n = g(m) = m * N / M, embeddings 0 -> 0; a 4-layer student of a 12-layer BERT.
    assert uniform_layer_map(4, 12) == [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]
    assert uniform_layer_map(2, 6) == [(0, 0), (1, 3), (2, 6)]


def test_explicit_map_is_checked():
    assert resolve_layer_map([[1, 2], [2, 6]], student_layers=2, teacher_layers=6) == [(1, 2), (2, 6)]
    with pytest.raises(TrainingError, match="outside"):
        resolve_layer_map([[3, 2]], student_layers=2, teacher_layers=6)
    with pytest.raises(TrainingError, match="at least as many layers"):
        resolve_layer_map("uniform", student_layers=4, teacher_layers=2)


def test_hidden_mse_is_mse_of_projected_states_without_padding():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    projection = nn.Linear(4, 6)
    mask = torch.ones(2, 3)
    expected = ((student @ projection.weight.T + projection.bias - teacher) ** 2).mean()  # MSE(H^S W, H^T)
    assert torch.allclose(hidden_mse(projection(student), teacher, mask), expected, atol=1e-6)


def test_hidden_mse_leaves_padding_out():
    student, teacher = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    student[0, 0] = torch.tensor([1.0, 3.0])  # real token: squared errors 1 and 9
    student[0, 2] = 100.0  # a padding position: ignored
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # 2 real tokens x 2 dims = 4 elements, squared error sum 10
    assert hidden_mse(student, teacher, mask).item() == pytest.approx(10 / 4)


def test_attention_mse_is_head_average_of_mse():
    torch.manual_seed(1)
    student = torch.softmax(torch.randn(2, 3, 4, 4), -1)  # (batch, heads, length, length)
    teacher = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    mask = torch.ones(2, 4)
    # 1/h sum_i MSE(A_i^S, A_i^T), each MSE over batch x length x length
    expected = sum(((student[:, i] - teacher[:, i]) ** 2).mean() for i in range(3)) / 3
    assert torch.allclose(attention_mse(student, teacher, mask), expected, atol=1e-7)
    assert attention_mse(teacher, teacher, mask).item() == 0.0


def test_attention_mse_with_padding_and_different_heads():
    student = torch.zeros(1, 2, 2, 2)
    teacher = torch.zeros(1, 4, 2, 2)
    student[0, :, 0, 0] = 1.0  # both student heads put 1 on (q0, k0): head mean 1
    teacher[0, :2, 0, 0] = 1.0  # half the teacher heads: head mean 0.5
    student[0, :, 1, 1] = 7.0  # query 1 is padding: ignored
    mask = torch.tensor([[1.0, 0.0]])
    # head means compared (h = 1); only the pair (q0, k0) is real: (1 - 0.5)^2 / 1
    assert attention_mse(student, teacher, mask).item() == pytest.approx(0.25)
