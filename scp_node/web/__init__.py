"""The node's web console, /metrics, /livez and /readyz (see scp_node.web.app)."""
