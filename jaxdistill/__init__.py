"""jaxdistill: JAX-native knowledge distillation with auditable students."""

__version__ = '0.1.0'
