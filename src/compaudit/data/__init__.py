"""Data sets: the embedded ``digits`` and readers of the standard on-disk formats.

:data:`DATASETS` imports every module of this package (and every ``compaudit.datasets`` entry
point) on its first lookup, so a new data set is one new file that registers it.
"""

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
