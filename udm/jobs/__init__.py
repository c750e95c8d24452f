"""Importable jobs behind the console scripts: each takes a composed config, nothing else does."""
