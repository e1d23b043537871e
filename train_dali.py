"""Train MS-ResNet SNNs on I2E events made on the fly by DALI. ``python train_dali.py --help``.

With no arguments it trains a small model on an embedded demo data set (generated once, cached). The
command line only parses into a TrainConfig (``--config FILE`` / flags) and calls
``i2e_dali.training.train`` (i2e_dali/training/run.py, cli.py).
"""
from i2e_dali.training.run import main

if __name__ == "__main__":
    main()
