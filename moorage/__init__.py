"""moorage: a container runtime suite that speaks containerd's APIs over ttrpc.

setup.py installs api/, services/, proxy/ and nri/ as moorage.api, moorage.services,
moorage.proxy and moorage.nri. In a source checkout they are found through
``.layout/moorage`` (links to those folders, added to this package's path below), so an
editable install needs no import hook: ``make venv`` makes it a plain .pth naming
``.layout/root`` (links to moorage/ and ttrpc/), which keeps interpreter start-up light.
An installed wheel has them inside the package and no ``.layout``.
"""

import os as _os

__version__ = "0.1.0"

_LINKS = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.realpath(__file__))), ".layout", "moorage")
if _os.path.isdir(_LINKS):
    __path__.append(_LINKS)
