"""A user module whose own import fails: jaxdistill must show that error, in one line."""

import jaxdistill_missing_dependency  # noqa: F401  (not installed, on purpose)
