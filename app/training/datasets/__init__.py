"""Datasets: the static catalog here is torch-free; loaders live in `registry` (torch)."""
