"""mrcnn.layers."""
