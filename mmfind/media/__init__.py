"""Decoding of media files into arrays. Decode only: no models, no storage."""
