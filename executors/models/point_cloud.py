"""Point-cloud encoders written here in PyTorch: PointNet and DGCNN, [B, N, 3] -> [B, D].

Both are permutation-invariant (a symmetric max pool over points) and take any point count N.
Build from JSON: ``build_model({"builder": "pointnet", "kwargs": {"embedding_dim": 128}})`` or
``{"builder": "dgcnn", "kwargs": {"k": 16, "embedding_dim": 128}}``.

* PointNet (Qi et al. 2017, without the input/feature T-Nets): a shared per-point MLP
  h_i = MLP(p_i) (1x1 convolutions + BatchNorm + ReLU, widths ``point_widths``), global feature
  g = max_i h_i, then a head MLP g -> D (widths ``head_widths`` + [D]).
* DGCNN (Wang et al. 2019): EdgeConv layers x_i' = max_{j in kNN(i)} ReLU_a(Θ [x_j - x_i, x_i])
  (kNN recomputed in each layer's feature space, LeakyReLU a=0.2), the layers' outputs concatenated
  and lifted to ``global_dim`` by a 1x1 convolution, g = [max_i, mean_i], then the head MLP -> D.
  Memory per layer is O(B·N·k·C) and the kNN O(B·N²): keep N around 512-1024 on a CPU.

The last layer (``head``'s final Linear) has no activation, so embeddings can take any sign.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from executors.errors import InputError
from executors.models.registry import register_builder
from executors.models.weights import read_state_dict


def _check_points(points: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[2] != 3 or points.shape[1] < 1:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise InputError(f'tensor: a point-cloud encoder takes a batch of point clouds [B, N, 3], got {shape}')


def _positive_ints(setting: str, values, allow_empty: bool = False) -> list[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (not values and not allow_empty) \
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise InputError(f'{setting}: expected a list of positive integers, got {values!r}')
    return [int(v) for v in values]


def _positive_int(setting: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f'{setting}: expected a positive integer, got {value!r}')
    return value


def _head(in_dim: int, widths: Sequence[int], embedding_dim: int, dropout: float) -> nn.Sequential:
    """MLP in_dim -> widths... -> embedding_dim: Linear+BatchNorm+ReLU(+Dropout) per hidden layer, plain Linear last."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, embedding_dim))
    return nn.Sequential(*layers)


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(f'dropout: expected a number in [0, 1), got {dropout!r}')
    return float(dropout)


class PointNet(nn.Module):
    """[B, N, 3] -> [B, embedding_dim]: shared point MLP (``point_widths``), max pool, head MLP."""

    def __init__(self, embedding_dim: int = 256, point_widths: Sequence[int] = (64, 128, 1024),
                 head_widths: Sequence[int] = (512,), dropout: float = 0.3):
        super().__init__()
        embedding_dim = _positive_int('embedding_dim', embedding_dim)
        point_widths = _positive_ints('point_widths', point_widths)
        head_widths = _positive_ints('head_widths', head_widths, allow_empty=True)
        layers: list[nn.Module] = []
        in_dim = 3
        for width in point_widths:
            layers += [nn.Conv1d(in_dim, width, 1, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            in_dim = width
        self.point_mlp = nn.Sequential(*layers)
        self.head = _head(in_dim, head_widths, embedding_dim, _check_dropout(dropout))
        self.embedding_dim = embedding_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        _check_points(points)
        features = self.point_mlp(points.transpose(1, 2))  # [B, C, N]
        return self.head(features.max(dim=2).values)


def knn_indices(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N, k] indices of each point's k nearest points (itself included) by squared euclidean
    distance ||x_i||² - 2 x_i·x_j + ||x_j||² over features [B, C, N]."""
    inner = torch.bmm(features.transpose(1, 2), features)  # [B, N, N]
    squared = features.pow(2).sum(dim=1)  # [B, N]
    distances = squared.unsqueeze(2) - 2 * inner + squared.unsqueeze(1)
    return distances.topk(k, dim=2, largest=False).indices


def edge_features(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, 2C, N, k] edge features [x_j - x_i, x_i] for the k nearest neighbours j of each point i."""
    batch, channels, num_points = features.shape
    neighbours = knn_indices(features, k)  # [B, N, k]
    points_last = features.transpose(1, 2)  # [B, N, C]
    flat = neighbours + torch.arange(batch, device=features.device).view(-1, 1, 1) * num_points
    gathered = points_last.reshape(batch * num_points, channels)[flat.reshape(-1)].view(batch, num_points, k, channels)
    centre = points_last.unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([gathered - centre, centre], dim=3).permute(0, 3, 1, 2).contiguous()


class EdgeConv(nn.Module):
    """[B, C, N] -> [B, out_dim, N]: x_i' = max_j LeakyReLU(BN(Θ [x_j - x_i, x_i])) over the k nearest j."""

    def __init__(self, in_dim: int, out_dim: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Conv2d(2 * in_dim, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim),
                                 nn.LeakyReLU(0.2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(edge_features(features, min(self.k, features.shape[2]))).max(dim=3).values


class DGCNN(nn.Module):
    """[B, N, 3] -> [B, embedding_dim]: EdgeConv layers (``edge_widths``, k neighbours), concatenation,
    1x1 conv to ``global_dim``, max and mean pool ([B, 2·global_dim]), head MLP."""

    def __init__(self, embedding_dim: int = 256, k: int = 20, edge_widths: Sequence[int] = (64, 64, 128, 256),
                 global_dim: int = 1024, head_widths: Sequence[int] = (512,), dropout: float = 0.5):
        super().__init__()
        embedding_dim = _positive_int('embedding_dim', embedding_dim)
        self.k = _positive_int('k', k)
        edge_widths = _positive_ints('edge_widths', edge_widths)
        global_dim = _positive_int('global_dim', global_dim)
        head_widths = _positive_ints('head_widths', head_widths, allow_empty=True)
        self.edge_convs = nn.ModuleList()
        in_dim = 3
        for width in edge_widths:
            self.edge_convs.append(EdgeConv(in_dim, width, self.k))
            in_dim = width
        self.lift = nn.Sequential(nn.Conv1d(sum(edge_widths), global_dim, 1, bias=False), nn.BatchNorm1d(global_dim),
                                  nn.LeakyReLU(0.2))
        self.head = _head(2 * global_dim, head_widths, embedding_dim, _check_dropout(dropout))
        self.embedding_dim = embedding_dim

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        _check_points(points)
        features = points.transpose(1, 2)  # [B, 3, N]
        outputs = []
        for edge_conv in self.edge_convs:
            features = edge_conv(features)
            outputs.append(features)
        lifted = self.lift(torch.cat(outputs, dim=1))  # [B, global_dim, N]
        pooled = torch.cat([lifted.max(dim=2).values, lifted.mean(dim=2)], dim=1)
        return self.head(pooled)


def _with_weights(model: nn.Module, weights_path: str | None) -> nn.Module:
    if weights_path is not None:
        state = read_state_dict(weights_path)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise InputError(f'weights_path: {str(weights_path)!r} does not fit this {type(model).__name__} '
                             f'({str(error).splitlines()[0]}); give weights saved from the same settings') from error
    return model


@register_builder('pointnet')
def build_pointnet(embedding_dim: int = 256, point_widths: Sequence[int] = (64, 128, 1024),
                   head_widths: Sequence[int] = (512,), dropout: float = 0.3, weights_path: str | None = None) -> nn.Module:
    """:class:`PointNet` ([B, N, 3] -> [B, embedding_dim]); ``weights_path``: a local state dict
    (.safetensors, or .pth read with weights_only=True), e.g. a network pre-trained on other classes."""
    return _with_weights(PointNet(embedding_dim, point_widths, head_widths, dropout), weights_path)


@register_builder('dgcnn')
def build_dgcnn(embedding_dim: int = 256, k: int = 20, edge_widths: Sequence[int] = (64, 64, 128, 256),
                global_dim: int = 1024, head_widths: Sequence[int] = (512,), dropout: float = 0.5,
                weights_path: str | None = None) -> nn.Module:
    """:class:`DGCNN` ([B, N, 3] -> [B, embedding_dim]); ``weights_path`` as for PointNet."""
    return _with_weights(DGCNN(embedding_dim, k, edge_widths, global_dim, head_widths, dropout), weights_path)
