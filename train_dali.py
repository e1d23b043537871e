"""Train MS-ResNet SNNs on I2E events made on the fly by DALI. ``python train_dali.py --help``.

With no arguments it trains a small model on an embedded demo data set (generated once, cached).
"""
from i2e_dali.training.run import main

if __name__ == "__main__":
    main()
