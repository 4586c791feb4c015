"""``jaxdistill.mesh``, the import path earlier docs named (``jaxdistill.mesh.DEFAULT_RULES``):
an alias of `jaxdistill.runtime.mesh` (the same module object, so patches agree). New code
imports ``from jaxdistill.runtime import mesh``."""

import sys

from jaxdistill.runtime import mesh as _mesh

sys.modules[__name__] = _mesh
