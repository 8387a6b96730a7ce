"""NRI v2 for moorage: the runtime side (``moorage serve nri``) and the plugin SDK.

Concern: relaying pod and container lifecycle events to NRI plugins (containerd/nri's
wire: :mod:`.mux` + ttrpc) and merging what they answer. Serves ``moorage.nri.v1.Hooks``
(internal; the runtime and sandbox services call it through the proxy with
:class:`.client.NriHooks`) and the NRI socket plugins connect to. Not replica-safe: plugins
connect to one process. Keeps registered plugins and the pod/container view in memory.

Modules: ``mux`` (the multiplexer), ``plugin`` (one connection), ``adaptation`` (the
runtime side), ``launcher`` (pre-installed plugins), ``adjust`` (merging, OCI spec
application), ``convert`` (OCI spec -> NRI messages), ``api``/``client`` (the hook API),
``process``, ``config``, ``cli`` (``moor nri ls``), ``stub`` (the plugin SDK),
``plugins`` (sample plugins). See nri/README.md.
"""
