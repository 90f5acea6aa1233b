"""Converters from foreign checkpoint formats to our weight format, one module per format."""
