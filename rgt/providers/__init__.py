"""Providers: one module per platform behind the small interface in `rgt.providers.base`."""
