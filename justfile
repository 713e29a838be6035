# Tributary: the same two commands as the README, for people who use just.

# Build, start the dev broker (unless KAFKA_BROKERS is set), create topics, start every service.
up *ARGS:
    cargo xtask up {{ARGS}}

# Install the dev broker if needed, then fmt, clippy and every test.
test:
    cargo xtask test

# Regenerate schemas/ after a compatible change to the event types.
schemas:
    cargo xtask schemas

# Benchmarks next to same-run baselines, written to docs/benchmarks.md.
bench *ARGS:
    cargo xtask bench {{ARGS}}

# The whole suite under faults, checked against a reference (docs/reliability.md).
chaos *ARGS:
    cargo xtask chaos {{ARGS}}

# Bounded fuzzing of the parsers (docs/reliability.md).
fuzz *ARGS:
    cargo xtask fuzz {{ARGS}}
