"""The training data: the bundled set's split and scaling, the user's CSV and its errors."""

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from torch_manual_bp.data import DataError, load_breast_cancer, load_csv


def test_breast_cancer_split_is_stratified_and_scaled_on_train_only():
    from sklearn.datasets import load_breast_cancer as sk_load
    from sklearn.model_selection import train_test_split

    raw = sk_load()
    d = load_breast_cancer(val_fraction=0.2, seed=0)
    assert d.x_train.shape == (455, 30) and d.x_val.shape == (114, 30)
    assert d.x_train.dtype == torch.float32 and set(d.y_train.unique().tolist()) == {0.0, 1.0}
    # stratified: each split keeps the class ratio (357 benign of 569)
    for y in (d.y_train, d.y_val):
        assert abs(float(y.mean()) - 357 / 569) < 0.01
    # standardised with the TRAINING split's statistics: mean 0, std 1 there, not on val
    torch.testing.assert_close(d.x_train.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(d.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4, rtol=0)
    assert float(d.x_val.mean(0).abs().max()) > 1e-3
    # the rows are sklearn's split of the raw rows, mapped by the TRAIN statistics
    raw_train, raw_val = train_test_split(
        raw.data, test_size=0.2, stratify=raw.target, random_state=0
    )
    expected_val = (raw_val - raw_train.mean(0)) / raw_train.std(0)
    torch.testing.assert_close(d.x_val.double(), torch.from_numpy(expected_val), atol=1e-4, rtol=0)


def test_same_seed_same_split_other_seed_other_split():
    a, b, c = load_breast_cancer(seed=1), load_breast_cancer(seed=1), load_breast_cancer(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)


def test_csv_loads_and_maps_the_two_target_values(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["a,label,b"] + [
        f"{rng.normal():.6f},{'yes' if i % 2 else 'no'},{rng.normal():.6f}".replace(
            "yes", "7"
        ).replace("no", "3")
        for i in range(40)
    ]
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    d = load_csv(path, "label", val_fraction=0.25, seed=0)
    assert d.feature_names == ["a", "b"] and d.classes == ["3", "7"]
    assert d.x_train.shape == (30, 2) and d.x_val.shape == (10, 2)
    assert float(d.y_train.mean()) == 0.5  # stratified, 3 → 0 and 7 → 1


CSV_ERRORS = [
    # (file contents or None for a missing file, expected message fragment)
    pytest.param(None, "d.csv: no such file", id="missing-file"),
    pytest.param("", "d.csv:1:1: empty file", id="empty-file"),
    pytest.param("a,b,y\n", "d.csv:2:1: no data rows", id="header-only"),
    pytest.param("a,b,c\n1,2,0\n", "d.csv:1:1: no target column 'y'", id="no-target-column"),
    pytest.param(
        "a,b,y\n1,2,0\n3,x4,1\n", "d.csv:3:2: non-numeric value 'x4' in column 'b'",
        id="non-numeric",
    ),
    pytest.param("a,b,y\n1,2,0\n3,,1\n", "d.csv:3:2: non-numeric value ''", id="empty-cell"),
    pytest.param("a,b,y\n1,2,0\n3,nan,1\n", "d.csv:3:2: non-finite value 'nan'", id="nan-cell"),
    pytest.param("a,b,y\n1,2,0\n3,4\n", "d.csv:3:3: expected 3 comma-separated", id="ragged-row"),
    pytest.param(
        "a,b,y\n1,2,1\n3,4,1\n", "d.csv:2:3: target column 'y' must hold exactly two",
        id="one-class",
    ),
    pytest.param(
        "a,b,y\n1,2,0\n3,4,1\n5,6,2\n", "d.csv:4:3: target column 'y' must hold exactly two "
        "distinct values (binary classification), found 3: 0, 1, 2", id="three-classes",
    ),
    pytest.param("y\n1\n0\n", "d.csv:1:1: the target 'y' is the only column", id="no-features"),
    pytest.param("a,y\n1,0\n2,1\n3,1\n", "cannot split into train/validation", id="too-few-rows"),
]  # fmt: skip


@pytest.mark.parametrize(("contents", "message"), CSV_ERRORS)
def test_csv_errors_name_file_line_and_column(tmp_path, contents, message):
    path = tmp_path / "d.csv"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(DataError) as info:
        load_csv(path, "y")
    text = str(info.value)
    assert message in text
    assert "\n" not in text  # one line
    assert text.startswith(str(path))


def test_csv_that_is_a_directory_or_binary(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_csv(tmp_path, "y")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_csv(path, "y")


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        load_breast_cancer(val_fraction=1.0)


def test_csv_with_a_byte_order_mark_and_quotes(tmp_path):
    path = tmp_path / "excel.csv"
    rows = "y,a\n" + "".join(f'{i % 2},"{i * 0.5}"\n' for i in range(20))
    path.write_bytes(b"\xef\xbb\xbf" + rows.encode())  # as spreadsheet programs save it
    d = load_csv(path, "y")
    assert d.feature_names == ["a"] and d.x_train.shape == (16, 1)
