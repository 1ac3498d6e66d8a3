"""The data the training command trains on: the bundled breast-cancer set, or the user's CSV.

Both end as a ``Dataset`` of float32 tensors, examples as ROWS (the PyTorch layout; the
lecture's X is the transpose):

    x_train (m_train, n_x), y_train (m_train,)      y ∈ {0, 1}
    x_val   (m_val,   n_x), y_val   (m_val,)

The split is stratified (both splits keep the class ratio) and the features are standardised
with the mean and standard deviation of the TRAINING split only, so nothing about the
validation rows leaks into training.

A CSV that cannot be used raises ``DataError`` (a ``ValueError``) whose message is one line,
``FILE:LINE:COLUMN: what is wrong``, as compilers word it; the command prints it and exits 2.

Needs the ``train`` extra (scikit-learn); ``import torch_manual_bp`` does not import this module.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import torch

__all__ = ["DataError", "Dataset", "load_breast_cancer", "load_csv", "split_and_standardise"]


class DataError(ValueError):
    """Unusable input data; ``str(err)`` is one line naming the file, line and column."""


@dataclass
class Dataset:
    """Standardised train/validation tensors (examples as rows) and where they came from."""

    x_train: torch.Tensor  # (m_train, n_x) float32
    y_train: torch.Tensor  # (m_train,) float32, values 0.0 / 1.0
    x_val: torch.Tensor  # (m_val, n_x)
    y_val: torch.Tensor  # (m_val,)
    feature_names: list[str]
    source: str  # "breast_cancer" or the CSV's path
    classes: list[str] = field(default_factory=lambda: ["0", "1"])  # label of y = 0, y = 1

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device: torch.device | str) -> Dataset:
        """The same data on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val")}
        return Dataset(
            **moved, feature_names=self.feature_names, source=self.source, classes=self.classes
        )


def split_and_standardise(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    feature_names: list[str] | None = None,
    source: str = "",
    classes: list[str] | None = None,
) -> Dataset:
    """Stratified train/validation split, then x ← (x − μ_train) / σ_train.

    Args:
        x: (m, n_x) features; y: (m,) labels in {0, 1}.
        val_fraction: share of the rows held out for validation, in (0, 1).
        seed: the split's random state (same seed, same split).
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if not (0.0 < val_fraction < 1.0):
        raise ValueError(f"Invalid val_fraction: {val_fraction!r} (expected a value in (0, 1))")
    x_np, y_np = x.double().numpy(), y.double().numpy()
    try:
        x_tr, x_va, y_tr, y_va = train_test_split(
            x_np, y_np, test_size=val_fraction, stratify=y_np, random_state=seed
        )
    except ValueError as err:  # too few rows of a class for a stratified split
        raise DataError(f"{source or 'data'}: cannot split into train/validation: {err}") from None
    scaler = StandardScaler().fit(x_tr)  # μ, σ of the training split only

    def as_tensor(a):
        return torch.from_numpy(a).to(torch.float32).contiguous()

    return Dataset(
        x_train=as_tensor(scaler.transform(x_tr)),
        y_train=as_tensor(y_tr),
        x_val=as_tensor(scaler.transform(x_va)),
        y_val=as_tensor(y_va),
        feature_names=list(feature_names or [f"x{j}" for j in range(x.shape[1])]),
        source=source,
        classes=list(classes or ["0", "1"]),
    )


def load_breast_cancer(*, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled Wisconsin breast-cancer set: 569 rows × 30 features, binary.

    y = 1 is "benign", y = 0 "malignant" (scikit-learn's coding). Nothing is downloaded.
    """
    from sklearn.datasets import load_breast_cancer as _load

    bunch = _load()
    return split_and_standardise(
        torch.from_numpy(bunch.data),
        torch.from_numpy(bunch.target).double(),
        val_fraction=val_fraction,
        seed=seed,
        feature_names=[str(n) for n in bunch.feature_names],
        source="breast_cancer",
        classes=[str(c) for c in bunch.target_names],
    )


def _read_rows(path: str) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM is not a name
            return list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a CSV file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a UTF-8 text file ({err.reason})") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None


def _parse_cell(path: str, line: int, col: int, name: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(
            f"{path}:{line}:{col}: non-numeric value {cell!r} in column {name!r}"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}:{col}: non-finite value {cell!r} in column {name!r}")
    return value


def _binary_target(path: str, target: str, col: int, values: list[float], lines: list[int]):
    """Map the target's two distinct values to y ∈ {0, 1} (smaller → 0).

    A third distinct value is reported at the line where it first appears; a single value
    at the first data line.
    """
    first_line: dict[float, int] = {}
    for v, line in zip(values, lines, strict=True):
        first_line.setdefault(v, line)
    distinct = sorted(first_line)
    if len(distinct) != 2:
        shown = ", ".join(f"{v:g}" for v in distinct[:5]) + (", ..." if len(distinct) > 5 else "")
        where = sorted(first_line.values())[2] if len(distinct) > 2 else lines[0]
        raise DataError(
            f"{path}:{where}:{col}: target column {target!r} must hold exactly two distinct "
            f"values (binary classification), found {len(distinct)}: {shown}"
        )
    y = torch.tensor([float(v == distinct[1]) for v in values], dtype=torch.float64)
    return y, [f"{v:g}" for v in distinct]


def load_csv(path: str | os.PathLike, target: str, *, val_fraction: float = 0.2, seed: int = 0):
    """The user's numeric CSV: a header row, then one example per row.

    Every cell must be a finite number; the ``target`` column must hold exactly two distinct
    values (the smaller becomes y = 0, the larger y = 1); every other column is a feature.
    Lines and columns in error messages count from 1, the header being line 1.

    Raises:
        DataError: missing file, empty file, no such target column, ragged or non-numeric
            row, target not binary; the message is ``FILE:LINE:COLUMN: ...``.
    """
    path = os.fspath(path)
    rows = _read_rows(path)
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise DataError(f"{path}:1:1: empty file (expected a header row, then data rows)")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise DataError(
            f"{path}:1:1: no target column {target!r}; the header has: {', '.join(header)}"
        )
    t_col = header.index(target)
    if len(header) < 2:
        raise DataError(f"{path}:1:1: the target {target!r} is the only column: no features")
    feats, ys, lines = [], [], []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != len(header):
            raise DataError(
                f"{path}:{i}:{min(len(row), len(header)) + 1}: expected {len(header)} "
                f"comma-separated values (as in the header), found {len(row)}"
            )
        values = [_parse_cell(path, i, j + 1, header[j], c.strip()) for j, c in enumerate(row)]
        ys.append(values.pop(t_col))
        feats.append(values)
        lines.append(i)
    if not feats:
        raise DataError(f"{path}:2:1: no data rows after the header")
    y, classes = _binary_target(path, target, t_col + 1, ys, lines)
    return split_and_standardise(
        torch.tensor(feats, dtype=torch.float64),
        y,
        val_fraction=val_fraction,
        seed=seed,
        feature_names=[h for j, h in enumerate(header) if j != t_col],
        source=path,
        classes=classes,
    )
