"""Data: sources on disk (image folders, CIFAR batches, exported npz sets, CIFAR10-DVS recordings, the
demo set), the DALI ``EventLoader`` and the torch ``FrameLoader`` on one loader contract (``base``), the
front door ``make_loader`` (``factory``), and decode checking. Takes explicit keyword arguments only;
never parses command lines.
"""
