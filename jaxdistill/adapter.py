"""``jaxdistill.adapter``, the import path earlier docs named for `Model`: an alias of
`jaxdistill.models.adapter` (the same module object, so patches and ``isinstance`` agree).
New code imports ``from jaxdistill.models import Model``."""

import sys

from jaxdistill.models import adapter as _adapter

sys.modules[__name__] = _adapter
