"""The one thing pyproject.toml cannot say stably: the C extension (`runtime/nn/_hostcall`).

It holds the wasmtime host functions' trampoline (`_hostcall.c`) and the wasi-nn calls an
inference loop repeats (`_nncache.c`); building it needs a C compiler and Python's headers
(`make apt` installs gcc and python3-dev).
"""

from setuptools import Extension, setup

SOURCE = "operator/wasinn_operator/runtime/nn"

setup(
    ext_modules=[
        Extension(
            "wasinn_operator.runtime.nn._hostcall",
            sources=[f"{SOURCE}/_hostcall.c", f"{SOURCE}/_nncache.c"],
            depends=[f"{SOURCE}/_hostcall.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
