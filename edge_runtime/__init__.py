"""What runs on the device: bundles, preprocessing, backends, features, the few-shot gallery.

Nothing in this package imports torch (a test enforces it).
"""
