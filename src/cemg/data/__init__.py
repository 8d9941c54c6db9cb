"""Data stage: readers, k-core filtering, chronological leave-one-out split, demo data, download."""

from cemg.data.dataset import InteractionDataset, ItemTable
from cemg.data.split import SplitDataset, leave_one_out

__all__ = ["InteractionDataset", "ItemTable", "SplitDataset", "leave_one_out"]
