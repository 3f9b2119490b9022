"""The embedding front-end of tables: numeric columns pass, each categorical code becomes a learned vector."""

import torch
from torch import nn

from app.training.datasets.splits import TableLayout

# fastai's rule of thumb (tabular.model.emb_sz_rule), capped for the zoo's small models.
MAX_EMBEDDING_DIM = 32


def embedding_dim(cardinality: int) -> int:
    """Return the embedding width of a column with `cardinality` codes (unknown included):
    min(32, round(1.6 * cardinality ** 0.56)), at least 1."""
    return max(1, min(MAX_EMBEDDING_DIM, round(1.6 * cardinality ** 0.56)))


class TabularEmbedding(nn.Module):
    """(batch, numeric + n_categorical) float -> (batch, numeric + sum of embedding widths).

    Codes arrive as floats (the rows stay one float32 tensor) and are cast with `.long()` here,
    so an ONNX export reads a float input and runs Cast + Gather.
    """

    def __init__(self, layout: TableLayout) -> None:
        super().__init__()
        self.layout = layout
        self.numeric = layout.numeric
        self.tables = nn.ModuleList(nn.Embedding(k, embedding_dim(k)) for k in layout.cardinalities)
        self.out_features = layout.numeric + sum(table.embedding_dim for table in self.tables)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x[:, self.numeric:].long()  # (batch, n_categorical)
        vectors = [table(codes[:, i]) for i, table in enumerate(self.tables)]  # each (batch, dim_i)
        return torch.cat([x[:, :self.numeric], *vectors], dim=1)


def model_layout(model: nn.Module) -> TableLayout | None:
    """Return the table layout a model embeds, or None when it reads plain numbers."""
    return next((m.layout for m in model.modules() if isinstance(m, TabularEmbedding)), None)
