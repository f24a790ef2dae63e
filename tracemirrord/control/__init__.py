"""The daemon's control plane: the socket server, the telemetry it reports, and the shared schema."""
