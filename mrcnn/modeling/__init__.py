"""mrcnn.modeling."""
