"""Data sets: the embedded ``digits`` and readers of the standard on-disk formats."""

from compaudit.data import cifar as _cifar  # noqa: F401  (registers)
from compaudit.data import digits as _digits  # noqa: F401  (registers)
from compaudit.data import imagefolder as _imagefolder  # noqa: F401  (registers)
from compaudit.data import mnist as _mnist  # noqa: F401  (registers)
from compaudit.data import svhn as _svhn  # noqa: F401  (registers)
from compaudit.data.base import (
    DATASETS,
    ArrayDataset,
    DataBundle,
    DataParams,
    DataSource,
    batches,
    load_dataset,
)

__all__ = ["DATASETS", "ArrayDataset", "DataBundle", "DataParams", "DataSource", "batches", "load_dataset"]
