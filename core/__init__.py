"""diffuserve: a REST inference service for diffusion models."""

__version__ = "0.1.0"
