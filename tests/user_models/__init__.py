"""Flax modules that live outside jaxdistill, the way a user's own package would.

The tests name them by import path (``tests.user_models.nnx_models:CNN``), exactly as
``--config.student.module=mypkg.nets:Net`` does, so nothing here is registered anywhere.
"""
