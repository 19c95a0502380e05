"""hsmsign: sign embedded Linux artifacts with keys that never leave a PKCS#11 token.

This package is loaded two ways: by BitBake through ``addpylib`` (parse time, host
Python, standard library only) and by pip from the repository's pyproject.toml
(the ``hsmsign`` command). What parse time loads (``bitbake``, ``settings``,
``roles``, ``secrets``, ``known_keys``, ``uri``, ``errors``, ``devtoken``) imports
no third-party package at module level: docs/dev/internals.md, tests/unit/test_parse_time.py.
"""

__version__ = "0.1.0"

# Submodules BitBake imports with the package (addpylib in the layer's layer.conf);
# the classes call them as hsmsign.bitbake.NAME(d). Standard library only.
BBIMPORTS = ["bitbake"]
