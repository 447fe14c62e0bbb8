"""unidl against hand-written PyTorch, TensorFlow and Keras 3: ``python benchmarks/bench.py [--quick]``.

The same as ``unidl bench``; the comparisons live in ``unidl/bench.py``. Writes ``benchmarks/RESULTS.md``.
"""

import sys

from unidl.bench import main

if __name__ == "__main__":
    sys.exit(main())
