"""Encoders turn decoded media and query text into unit vectors of one embedding space."""
