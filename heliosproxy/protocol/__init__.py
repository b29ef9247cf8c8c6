"""PostgreSQL v3 wire protocol, sans-IO: framing, message encoders/decoders and auth computations."""
