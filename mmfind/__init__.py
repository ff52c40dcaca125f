"""mmfind: search your own media by meaning."""

__version__ = "0.1.0"
