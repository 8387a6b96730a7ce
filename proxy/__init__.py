"""The proxy: the suite's front door (``<state>/moorage.sock.ttrpc``).

It routes every call by ttrpc service name to the processes that serve it (router.py) and
serves itself containerd's namespaces.v1, events.v1 (plus the ttrpc Events/Forward shims
call), introspection.v1 and version.v1. One process; not replica-safe (it owns the socket).
"""
