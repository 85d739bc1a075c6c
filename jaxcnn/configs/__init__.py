"""Configs as code: ``get_config()`` returning an ``ml_collections.ConfigDict``."""
