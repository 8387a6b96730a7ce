"""The registry client: OCI distribution over HTTP(S) (resolve, fetch, push), containerd's
hosts.toml, and registry auth. One concern per module:

- hosts.py:   which endpoints serve a registry host (hosts.toml / certs.d), with TLS settings
- auth.py:    credentials (callback or docker config file) and challenges (Basic, Bearer)
- http.py:    one HTTP session per endpoint, bounded reads, error mapping without secrets
- resolver.py: resolve/fetch/push on top of the three
"""
