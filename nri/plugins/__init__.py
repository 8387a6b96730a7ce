"""Sample NRI plugins built on moorage.nri.stub: run one as
``python -m moorage.nri.plugins.<name> --idx NN [--socket-path P]``, or drop a two-line
executable named ``NN-name`` into the plugin folder (see nri/README.md).

- ``logger``: logs every event it gets (all 14 by default).
- ``inject``: adds environment variables and annotations to every new container.
- ``ulimit``: sets rlimits (``ulimit -n`` and friends) from its config or an annotation.
- ``device``: injects devices named in its config or an annotation.
"""
