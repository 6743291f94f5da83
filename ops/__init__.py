"""Operations tooling: local stack, embedded store, benchmarks, deployment files."""
