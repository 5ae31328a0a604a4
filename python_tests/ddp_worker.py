"""Launched by test_train.py under torchrun: trains on the token file argv[1] (ids 0..15) with
the config of argv[2] (JSON), then saves this rank's weights and losses to argv[3]/rank<R>.pt."""
import json
import sys
from pathlib import Path

import torch

from mdm_ext.data import TokenDataset
from mdm_ext.train import TrainConfig, train

data, config, out = sys.argv[1:4]
result = train(TrainConfig(**json.loads(config)), TokenDataset(data, vocab_size=16))
torch.save({"model": result.model.state_dict(), "losses": result.losses},
           Path(out) / f"rank{result.rank}.pt")
