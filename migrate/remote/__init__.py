"""Everything about reaching a host: host specs, ssh_config, host keys, connections, probing."""
