"""Client sessions: login and the per-statement loop that ties classification, plugins, routing and pools together."""
