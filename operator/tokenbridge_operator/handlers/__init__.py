"""Reconcilers: plain functions with explicit arguments, wired to kopf in ``tokenbridge_operator.main``."""
