"""The command-line tools beside the training flow, each a module with ``main(argv)`` and a console
script: ``check`` (i2e-check), ``export`` (i2e-export), ``viz`` (i2e-viz), ``calibrate`` (i2e-calibrate)
and the ``bench`` package (i2e-bench: convert, loader, train, corpus). Tools may use everything below
them (training, data, convert); nothing below imports a tool.
"""
