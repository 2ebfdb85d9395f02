"""The generators: importing this package registers each in `synth.base.GENERATORS`.

No generator module imports torch, SDV or mbi at import time; each does inside `_fit`.
"""

from synth.generators import cart, mst, sdv_models  # noqa: F401
