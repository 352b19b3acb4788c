"""One process of a distributed training test (run by torch.distributed.run from test_train.py).

Usage: python -m torch.distributed.run --nproc_per_node N tests/_ddp_worker.py DATA CONFIG_JSON
DATA is a safetensors file with an "activations" tensor; CONFIG_JSON holds TrainConfig fields.
"""

import json
import sys

from safetensors.torch import load_file

from hf_topafa.training.train import TrainConfig, train

if __name__ == "__main__":
    data_path, config_json = sys.argv[1], sys.argv[2]
    x = load_file(data_path)["activations"]
    train(TrainConfig.from_flat(**json.loads(config_json)), data=x)
