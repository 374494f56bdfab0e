"""wasinn-operator: wasi-nn inference tasks on OpenVINO, locally or on Kubernetes."""

__version__ = "0.1.0"
