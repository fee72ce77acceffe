"""trafficcast application layer: the CLI, the REST service, the model registry and jobs."""
