"""Backend servers: connections to PostgreSQL nodes, node registry, health checks and failover."""
