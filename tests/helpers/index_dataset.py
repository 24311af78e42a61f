"""A dataset whose sample i is the integer i, for tests of sampling order and sharding."""
import torch


class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return i

    def set_epoch(self, epoch):  # as TrainDataset has; the order does not depend on it
        pass
