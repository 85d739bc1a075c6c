"""Scripted experiments that reproduce classic CNN results (configs in ``configs/``)."""
