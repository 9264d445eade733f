import gzip

import numpy as np
import pytest
from conftest import needs_fashion_mnist

from shiftwatch import ShiftwatchError
from shiftwatch.core.io import ImageSet
from shiftwatch.data.fashion_mnist import (
    DEBIAN_DIR,
    find_source,
    load_fashion_mnist,
    read_idx,
    split_domains,
    subsample,
)


def _train_like(n):
    return ImageSet(np.zeros((n, 28, 28), np.float32), np.arange(n) % 10, np.arange(n))


def test_split_is_70_30_disjoint_complete_and_reproducible():
    train = _train_like(60_000)
    domain_a, domain_b = split_domains(train, 0.3, seed=42)
    assert (len(domain_a), len(domain_b)) == (42_000, 18_000)
    assert np.intersect1d(domain_a.source_index, domain_b.source_index).size == 0
    assert np.union1d(domain_a.source_index, domain_b.source_index).size == 60_000
    again_a, _ = split_domains(train, 0.3, seed=42)
    other_a, _ = split_domains(train, 0.3, seed=7)
    np.testing.assert_array_equal(domain_a.source_index, again_a.source_index)
    assert not np.array_equal(domain_a.source_index, other_a.source_index)


def test_subsample_is_seeded_and_optional():
    train = _train_like(100)
    assert subsample(train, None, 0) is train
    small = subsample(train, 20, 0)
    assert len(small) == 20 and np.array_equal(small.source_index, subsample(train, 20, 0).source_index)


def test_missing_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ShiftwatchError, match="data.source = .*IDX files not found there"):
        find_source(str(tmp_path), download_root=tmp_path / "raw")


def test_corrupt_idx_file_is_rejected(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0" * 60_008))
    with pytest.raises(ShiftwatchError, match="corrupt"):
        read_idx(tmp_path, "train-labels-idx1-ubyte")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"truncated, not gzip")
    with pytest.raises(ShiftwatchError, match="unreadable"):
        read_idx(tmp_path, "t10k-labels-idx1-ubyte")


@needs_fashion_mnist
def test_real_fashion_mnist_loads_and_verifies():
    assert find_source(None, download_root=DEBIAN_DIR) == DEBIAN_DIR
    train, test = load_fashion_mnist(DEBIAN_DIR)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.images.min() >= 0 and train.images.max() <= 1


@needs_fashion_mnist
def test_raw_uncompressed_copy_in_data_source_verifies(tmp_path):
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(gzip.decompress((DEBIAN_DIR / f"{name}.gz").read_bytes()))
    assert read_idx(tmp_path, "t10k-labels-idx1-ubyte").shape == (10_000,)
