"""Model-agnostic training: the loop, samplers, row-sparse optimisers and backends."""
