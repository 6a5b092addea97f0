"""edgessl: self-supervised vision models from server to edge."""

__version__ = "0.1.0"
