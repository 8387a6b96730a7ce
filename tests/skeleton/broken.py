"""A plugin module whose own import fails: must be reported, not skipped."""

import moorage_no_such_dependency  # noqa: F401
