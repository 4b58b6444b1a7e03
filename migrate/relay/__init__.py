"""Fan-out: one copy over the laptop's link, the other hosts fed host to host (issue 24).

plan.py: pure builders (who feeds whom, the transfer key's authorized_keys line, the add/remove/list
commands, the sender's ssh command, the reach check, stale-marker decisions); keys.py: the one-off
ed25519 key pair; session.py: installing and removing a transfer's key on the hosts.
"""
