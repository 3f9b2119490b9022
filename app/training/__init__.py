"""Distillery training engine: pure PyTorch + pydantic, nothing from the web or queue layers."""
