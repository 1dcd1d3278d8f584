"""The compiled part of stockade: the receiver's fast path (optional).

Everything else is in pyproject.toml.  ``optional=True``: without a C
compiler or Python's headers the build goes on without it, and the
supervisor answers every call in Python (``stockade check`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stockade.supervisor._fastpath",
            ["src/stockade/supervisor/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
