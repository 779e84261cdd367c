"""DKIM signing at send time: keys (keys.py), header canonicalisation (canon.py), signatures (signer.py),
the relay's signing policy (policy.py) and the ``zonerelay dkim`` commands (commands.py)."""
