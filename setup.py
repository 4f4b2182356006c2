"""The one thing pyproject.toml cannot say: the optional C helper.

``filestore.storage._syncwrite`` writes a small blob durably under one
release of the GIL (why, and what it measured: docs/performance.md). It is
optional: where no C compiler is found the build goes on without it and the
local store uses its Python path, which does the same system calls; set
``FILESTORE_NO_EXTENSIONS=1`` to build without it on purpose. Everything
else about the package lives in pyproject.toml.
"""

import os

from setuptools import Extension, setup

extensions = []
if os.name == "posix" and not os.environ.get("FILESTORE_NO_EXTENSIONS"):
    extensions.append(
        Extension(
            "filestore.storage._syncwrite",
            ["filestore/storage/_syncwrite.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
