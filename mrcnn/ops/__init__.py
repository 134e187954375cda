"""mrcnn.ops."""
