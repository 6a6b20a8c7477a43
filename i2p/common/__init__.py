"""Shared building blocks: errors, geometry helpers, point ops, datasets, configs."""
