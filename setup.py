"""Maps the top-level folders under one import root.

`services/`, `proxy/`, `api/` and `nri/` install as `moorage.services`, `moorage.proxy`,
`moorage.api` and `moorage.nri`, so nothing generic lands at the top of site-packages;
`ttrpc/` is the vendored protocol package. package-dir keeps `pip install -e .` working.

The proxy's C relay (proxy/relay.c) is an extension, `moorage.proxy._relay`, built by cffi's
setuptools hook from proxy/relay_build.py (`cffi_modules`; cffi is a build requirement):
into the wheel, or next to its sources in proxy/ for an editable install.
"""

from setuptools import find_packages, setup

ROOTS = {
    "moorage": "moorage",
    "moorage.api": "api",
    "moorage.services": "services",
    "moorage.proxy": "proxy",
    "moorage.nri": "nri",
    "ttrpc": "ttrpc",
}


def packages() -> list[str]:
    found = []
    for name, folder in ROOTS.items():
        found.append(name)
        found.extend(f"{name}.{sub}" for sub in find_packages(folder))
    return found


setup(packages=packages(), package_dir=ROOTS, cffi_modules=["proxy/relay_build.py:ffibuilder"])
