"""The local sandbox: rehearsal hosts that behave like a borrowed GPU server."""
