"""Stand-in for sym.sdk.integrations."""
