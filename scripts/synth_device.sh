#!/usr/bin/env bash
# The device check (a lent GPU machine has no package registry): SAELens and the two packages
# it needs that the machine lacks come as wheels in .whl, fetched here beforehand with
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl sae-lens==6.54.12 simple-parsing==0.1.9 \
#     docstring_parser==0.18.0
# and the device tool's run carrying .whl: bash scripts/synth_device.sh --budget 555
# The packages SAELens imports but never calls for synthetic worlds are left out
# (scripts/device_site). Arguments go to synth_device.py; what comes back lands in $OUT.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/scripts/device_site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, transformers, accelerate, sae_lens.synthetic as s
print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate',
      accelerate.__version__, 'cuda', torch.cuda.is_available())" || exit 1
python3 scripts/synth_device.py --out "$OUT" "$@" 2>&1 | tee "$OUT/driver.log"
