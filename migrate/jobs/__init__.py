"""Client side of the dispatcher: job specs, the agent bundle, talking to the agent over SSH."""
