"""orderstream plumbing: configuration, codecs, Kafka I/O, sinks, CLI, metrics; dev tooling apart in `devtools`."""
