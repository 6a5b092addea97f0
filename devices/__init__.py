"""The server side of devices: profiles, signing, flashing (operators' tools)."""
