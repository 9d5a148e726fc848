"""Image tokenizer of the captioned job: image_fsq.py's model (32×32 → 8×8 = 64 FSQ codes of 1000), trained 2500 steps.

The default job (`mmntp train` with no --config) trains it inside its workdir
(stage "tokenizer"); alone:

    mmntp tokenizer train --cpu-devices 2 --config experiments/tokenizers/image_job.py --workdir workdirs/tokenizers/image_job

The same architecture, loss and optimizer as experiments/tokenizers/image_fsq.py,
a quarter of its steps: image_fsq.py's curve reaches 27.9 dB held-out PSNR (parameter
average) at step 2500, enough for the colours, shapes and backgrounds a caption names.
"""

import dataclasses
import importlib.util
from pathlib import Path


def get_config():
    spec = importlib.util.spec_from_file_location("image_fsq", Path(__file__).with_name("image_fsq.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exp = module.get_config()
    train = dataclasses.replace(exp.train, steps=2500, eval_every=2500, samples=8)
    checkpoint = dataclasses.replace(exp.checkpoint, every=500)
    return dataclasses.replace(exp, name="image_job", train=train, checkpoint=checkpoint)
