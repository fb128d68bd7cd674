"""orderstream plumbing: configuration, codecs, local stack, Kafka I/O, sinks, CLI, metrics."""
