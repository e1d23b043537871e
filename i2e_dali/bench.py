"""``python -m i2e_dali.bench MODE``: the documented spelling of ``i2e-bench`` (code in tools/bench/)."""
from .tools.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
