"""Building engines: profile planning, precision graphs, drift, TensorRT plans, metadata."""
