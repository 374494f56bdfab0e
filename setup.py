"""The one thing pyproject.toml cannot say stably: the C extension (`runtime/nn/_hostcall.c`).

It holds the wasmtime host functions' trampoline and wasi-nn's repeated calls; building it needs
a C compiler and Python's headers (`make apt` installs gcc and python3-dev).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wasinn_operator.runtime.nn._hostcall",
            sources=["operator/wasinn_operator/runtime/nn/_hostcall.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        )
    ]
)
