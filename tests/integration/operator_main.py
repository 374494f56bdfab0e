"""The operator's handlers, loaded by path for kopf.testing.KopfRunner.

KopfRunner loads this file into a fresh registry on each run; the handlers module is reloaded so
its decorators register again (a plain import would find it cached and register nothing).
"""

import importlib
import sys

NAME = "wasinn_operator.controller.handlers"
if NAME in sys.modules:
    importlib.reload(sys.modules[NAME])
else:
    importlib.import_module(NAME)
