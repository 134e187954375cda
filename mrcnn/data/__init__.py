"""mrcnn.data."""
