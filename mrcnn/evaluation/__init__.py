"""mrcnn.evaluation."""
